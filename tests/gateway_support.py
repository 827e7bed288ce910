"""A real broker and a real gateway over HTTP on loopback, for the gateway's tests."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import websockets

from deskbroker import xvnc
from deskbroker.api.app import create_app as create_broker_app
from deskbroker.domain import tickets
from deskbroker.gateway.app import create_app as create_gateway_app
from deskbroker.gateway.settings import GatewaySettings
from deskbroker.services.context import BrokerContext
from tests.tools import Tool, require

GATEWAY_KEY = "gateway-test-key-" + uuid.uuid4().hex


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_range(size: int = 20) -> tuple[int, int]:
    """A run of ports nothing listens on (checked once; good enough on a test machine)."""
    for _ in range(50):
        low = free_port()
        if low + size > 65000:
            continue
        ok = True
        for port in range(low, low + size):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return low, low + size - 1
    raise RuntimeError("no free port range")


class _Quiet(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Running:
    """An ASGI app served by uvicorn in a thread of its own."""

    server: uvicorn.Server
    thread: threading.Thread
    port: int
    app: Any

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def serve(app: Any, port: int) -> Running:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ws="websockets-sansio",
        access_log=False,
        # The client's address is the socket's: no X-Forwarded-For from loopback is
        # believed, so a test of client networks sees the address it connected from.
        proxy_headers=False,
    )
    server = _Quiet(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"server on port {port} did not start")
        time.sleep(0.02)
    return Running(server, thread, port, app)


def gateway_settings(broker_url: str, **extra: Any) -> GatewaySettings:
    low, high = free_range()
    values: dict[str, Any] = {
        "key": GATEWAY_KEY,
        "id": "gw-test",
        "host": "127.0.0.1",
        "port": free_port(),
        "forward_host": "127.0.0.1",
        "forward_ports": f"{low}-{high}",
        "broker_url": broker_url,
        "connect_timeout_s": 5.0,
    }
    values.update(extra)
    return GatewaySettings(**values)


@contextmanager
def broker_and_gateway(
    ctx: BrokerContext, **gateway_extra: Any
) -> Iterator[tuple[Running, Running]]:
    """The broker (``ctx``, its settings pointed at the gateway) and a gateway reporting to it."""
    broker_port = free_port()
    gw_settings = gateway_settings(f"http://127.0.0.1:{broker_port}", **gateway_extra)
    gateway = serve(create_gateway_app(gw_settings), gw_settings.port)
    ctx.settings.gateway_url = f"http://127.0.0.1:{gw_settings.port}"
    ctx.settings.gateway_key = GATEWAY_KEY
    ctx.settings.gateway_id = gw_settings.id
    broker = serve(create_broker_app(ctx), broker_port)
    try:
        yield broker, gateway
    finally:
        # The gateway first: its last reports still find the broker.
        gateway.stop()
        broker.stop()


def user_token(broker: Running, username: str, password: str) -> str:
    answer = httpx.post(
        f"{broker.url}/api/v1/auth/login",
        json={"username": username, "password": password},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


def connect(
    broker: Running, token: str, desktop_id: str, protocol: str, status: int = 200
) -> dict[str, Any]:
    answer = httpx.post(
        f"{broker.url}/api/v1/client/desktops/{desktop_id}/connect",
        json={"protocol": protocol},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    return body


def ticket_of(launch_url: str) -> str:
    return launch_url.split("#ticket=", 1)[1]


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextmanager
def chromium_page() -> Iterator[Any]:
    """A Playwright page in the system's Chromium (no browser download); requests to any
    host but 127.0.0.1 are recorded in ``page.foreign`` (a page must load nothing else)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1024, "height": 768})
            foreign: list[str] = []
            page.on(
                "request",
                lambda r: (
                    foreign.append(r.url)
                    if not r.url.startswith(
                        ("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")
                    )
                    else None
                ),
            )
            page.foreign = foreign
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.console_errors = errors
            yield page
        finally:
            browser.close()


SSHD = Tool("/usr/sbin/sshd", "openssh-server")
SSH_KEYGEN = Tool("ssh-keygen", "openssh-client")
SSH_USER = "dbgwtest"
SSH_PASSWORD = "Gw-test-password-1"


def _unix_user() -> None:
    """A Unix account the private sshd logs into with a password (tests run as root)."""
    if os.geteuid() != 0:
        pytest.fail("the SSH gateway tests make a Unix user: run them as root", pytrace=False)
    exists = subprocess.run(["id", SSH_USER], capture_output=True).returncode == 0
    if not exists:
        made = subprocess.run(
            ["useradd", "-m", "-s", "/bin/bash", SSH_USER], capture_output=True, text=True
        )
        # 9: another test process (a parallel worker, the other leg) made it in between.
        if made.returncode not in (0, 9):
            raise RuntimeError(f"useradd {SSH_USER} failed: {made.stderr}")
    subprocess.run(["chpasswd"], input=f"{SSH_USER}:{SSH_PASSWORD}".encode(), check=True)


@dataclass
class PrivateSshd:
    port: int
    # The host's public key line, as /etc/ssh/ssh_host_ed25519_key.pub holds it.
    host_key: str


@contextmanager
def private_sshd(directory: Path) -> Iterator[PrivateSshd]:
    """A real sshd on 127.0.1.1, its own host key and config, password logins for
    ``SSH_USER``."""
    sshd_path, keygen = require(SSHD, SSH_KEYGEN)
    _unix_user()
    port = free_port("127.0.1.1")
    key = directory / "host_ed25519"
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.1.1\nHostKey {key}\nPidFile {directory}/sshd.pid\n"
        "UsePAM no\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication no\nPermitRootLogin no\nStrictModes no\n"
        f"AllowUsers {SSH_USER}\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    process = subprocess.Popen(
        [sshd_path, "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        xvnc.wait_for_port("127.0.1.1", port)
        yield PrivateSshd(port, Path(f"{key}.pub").read_text().strip())
    finally:
        process.terminate()
        process.wait(timeout=10)


async def ssh_page(url: str, command: str | None, until: str) -> list[str]:
    """What the gateway's SSH page sees on ``url``: its control messages (the password
    prompt answered with ``SSH_PASSWORD``), a "ran: ``command``" line when the shell's
    prompt came and the command was typed, then the terminal's text once ``until``
    shows in it."""
    import json

    seen: list[str] = []
    text = ""
    typed = False
    async with websockets.connect(url) as ws:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                message = await asyncio.wait_for(ws.recv(), 10)
            except (websockets.ConnectionClosed, TimeoutError):
                break
            if isinstance(message, str):
                control = json.loads(message)
                seen.append(f"{control['type']}: {control['message']}")
                if control["type"] == "prompt":
                    await ws.send(json.dumps({"type": "password", "value": SSH_PASSWORD}))
                continue
            text += message.decode(errors="replace")
            if command is not None and not typed and "$ " in text:
                typed = True
                seen.append(f"ran: {command}")
                await ws.send(f"{command}\n".encode())
            if until in text:
                seen.append(text)
                break
    return seen


def signed_ticket(host: str, port: int, protocol: str) -> str:
    """A validly signed ticket, as though a broker had not checked the address."""
    values: dict[str, Any] = {
        "now": int(time.time()),
        "user_id": "u",
        "username": "mallory",
        "tenant_id": "t",
        "desktop_id": "d",
        "desktop_name": "target-1",
        "protocol": protocol,
        "host": host,
        "port": port,
        "gateway_id": "gw-test",
    }
    return tickets.mint(GATEWAY_KEY, **values)[0]


async def closed_with(url: str) -> tuple[int, str]:
    """The close code and reason a gateway WebSocket ends with, unread."""
    async with websockets.connect(url) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        return closed.value.rcvd.code, closed.value.rcvd.reason

"""Connecting by the client's network, over real HTTP on loopback: a client inside a
center's ``direct_networks`` connects directly, one outside through the gateway's port
forward (HTML5 always through the gateway); a failed forward leaves nothing of the
connect behind; SSH through the gateway logs in only to a desktop showing its known host
key, and reads real command output.

The broker sees the address each request really comes from (uvicorn believes no proxy
headers here): requests leave from 127.0.0.5 or 127.0.0.6, both local on Linux."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest

from deskbroker import xvnc
from deskbroker.bootstrap import add_local_user
from deskbroker.domain import tickets
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Desktop
from tests.gateway_support import (
    SSH_PASSWORD,
    SSH_USER,
    PrivateSshd,
    Running,
    broker_and_gateway,
    free_port,
    private_sshd,
    ssh_page,
    ticket_of,
    user_token,
)
from tests.helpers import USER_PASSWORD, Api
from tests.tools import XVNC, require

INSIDE = "127.0.0.5"
OUTSIDE = "127.0.0.6"


def connect_from(
    broker: Running,
    token: str,
    desktop: str,
    source: str,
    body: dict[str, Any],
    status: int = 200,
) -> dict[str, Any]:
    """The connect call made from ``source`` (a local address the socket binds)."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=30) as client:
        answer = client.post(
            f"{broker.url}/api/v1/client/desktops/{desktop}/connect",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )
    assert answer.status_code == status, answer.text
    result: dict[str, Any] = answer.json()
    return result


def banner(host: str, port: int, source: str) -> bytes:
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect((host, port))
        data = b""
        while len(data) < 12:
            chunk = sock.recv(12 - len(data))
            if not chunk:
                break
            data += chunk
        return data


@pytest.fixture
def vnc(api: Api) -> Iterator[dict[str, Any]]:
    """Two Xvnc desktops behind a static center, held by user0 and user1."""
    require(XVNC)
    port = free_port("127.0.1.1")
    running = [xvnc.start(f"127.0.1.{i}", port=port) for i in (1, 2)]
    try:
        ids = api.seed_pool(2, users=2, ports={"vnc": port})
        desktops = {n: api.login(n)["offers"][0]["desktop"]["id"] for n in ("user0", "user1")}
        yield {"port": port, "desktops": desktops, "center": ids["center"]}
    finally:
        for desktop in running:
            desktop.stop()


def test_the_client_network_decides_direct_or_gateway(
    api: Api, ctx: BrokerContext, vnc: dict[str, Any]
) -> None:
    center = vnc["center"]
    # Checked at the edge: a network in words, or a 422 that says what is wrong.
    for bad in (["10.0.0.0/33"], ["office"], ["10.0.0.0/8", ""]):
        answer = api.patch(f"centers/{center}", {"direct_networks": bad}, status=422)
        assert "is not a network" in answer["detail"]
    assert api.get(f"centers/{center}")["direct_networks"] == []
    saved = api.patch(
        f"centers/{center}", {"direct_networks": [f"{INSIDE}/32", "10.1.2.3/8", "10.0.0.0/8"]}
    )
    # Written back in canonical form, once each.
    assert saved["direct_networks"] == [f"{INSIDE}/32", "10.0.0.0/8"]

    desktop, port = vnc["desktops"]["user0"], vnc["port"]
    with broker_and_gateway(ctx) as (broker, gateway):
        token = user_token(broker, "user0", USER_PASSWORD)
        # Inside the center's client network: the desktop itself, no gateway on the way.
        direct = connect_from(broker, token, desktop, INSIDE, {"protocol": "vnc"})
        assert direct["route"] == "direct" and direct.get("ticket_expires_at") is None
        assert (direct["host"], direct["port"]) == ("127.0.1.1", port)
        assert banner(direct["host"], direct["port"], INSIDE) == b"RFB 003.008\n"

        # Outside: the gateway's port forward, open to that client only.
        outside = connect_from(broker, token, desktop, OUTSIDE, {"protocol": "vnc"})
        assert outside["route"] == "gateway" and outside["host"] == "127.0.0.1"
        assert outside["port"] != port and outside["ticket_expires_at"] > time.time()
        assert banner("127.0.0.1", outside["port"], INSIDE) == b""
        assert banner("127.0.0.1", outside["port"], OUTSIDE) == b"RFB 003.008\n"

        # A page goes through the gateway whatever the network (a browser speaks no RFB).
        page = connect_from(broker, token, desktop, INSIDE, {"client": "browser"})
        assert (page["protocol"], page["route"]) == ("html5-vnc", "gateway")
        assert page["launch_url"].startswith(f"{gateway.url}/viewer/vnc.html#ticket=")
        # A native client inside gets its file for the desktop itself.
        native = connect_from(broker, token, desktop, INSIDE, {"client": "native"})
        assert (native["protocol"], native["route"]) == ("rdp", "direct")
        assert "full address:s:127.0.1.1:3389" in native["content"]

        # The broker's own networks count too (for every center).
        ctx.settings.gateway_direct_networks = f"{OUTSIDE}/32"
        also = connect_from(broker, token, desktop, OUTSIDE, {"protocol": "vnc"})
        assert (also["route"], also["host"]) == ("direct", "127.0.1.1")

        # Another center's networks are not this desktop's: forgetting them sends the
        # inside client through the gateway again.
        ctx.settings.gateway_direct_networks = ""
        api.patch(f"centers/{center}", {"direct_networks": []})
        again = connect_from(broker, token, desktop, INSIDE, {"protocol": "vnc"})
        assert again["route"] == "gateway"
    routes = [e["detail"]["route"] for e in api.get("events?kind=connect")["items"]]
    assert sorted(routes) == ["direct"] * 3 + ["gateway"] * 3


def _desktop_marks(ctx: BrokerContext, desktop_id: str) -> tuple[Any, Any]:
    with ctx.db.read() as session:
        row = session.get(Desktop, desktop_id)
        assert row is not None
        return row.connect_granted_at, row.last_used_at


def test_a_failed_forward_undoes_the_connect(
    api: Api, ctx: BrokerContext, vnc: dict[str, Any]
) -> None:
    tenant = api.get("tenants?name=default")["items"][0]["id"]
    # One session for the whole tenant: a failed connect must not keep it.
    api.patch(f"tenants/{tenant}", {"quota_sessions": 1})
    first, second = vnc["desktops"]["user0"], vnc["desktops"]["user1"]
    before = _desktop_marks(ctx, first)
    with broker_and_gateway(ctx) as (broker, gateway):
        tokens = {n: user_token(broker, n, USER_PASSWORD) for n in ("user0", "user1")}
        state = gateway.app.state.gateway
        # The gateway refuses the forward (draining for an upgrade).
        state.drain()
        refused = connect_from(broker, tokens["user0"], first, OUTSIDE, {"protocol": "vnc"}, 503)
        assert "the gateway refused a port forward" in refused["detail"]
        assert _desktop_marks(ctx, first) == before
        state.draining = False
        # The quota unit was given back: the other user's session can start.
        served = connect_from(broker, tokens["user1"], second, OUTSIDE, {"protocol": "vnc"})
        assert served["route"] == "gateway"
        assert banner("127.0.0.1", served["port"], OUTSIDE) == b"RFB 003.008\n"
        # The gateway does not answer at all (nothing listens where it should be).
        ctx.settings.gateway_url = f"http://127.0.0.1:{free_port()}"
        api.patch(f"tenants/{tenant}", {"quota_sessions": None})
        marks = _desktop_marks(ctx, first)
        lost = connect_from(broker, tokens["user0"], first, OUTSIDE, {"protocol": "vnc"}, 503)
        assert "cannot be reached" in lost["detail"]
        assert _desktop_marks(ctx, first) == marks
    connects = api.get("events?kind=connect")["items"]
    assert [e["desktop_id"] for e in connects] == [second]
    failed = api.get("events?kind=connect.failed")["items"]
    assert sorted(e["desktop_id"] for e in failed) == [first, first]
    assert all(e["detail"]["route"] == "gateway" and e["detail"]["reason"] for e in failed)


# --- SSH through the gateway ----------------------------------------------------------
@pytest.fixture
def ssh_desktop(api: Api, ctx: BrokerContext, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with private_sshd(tmp_path) as sshd:
        api.seed_pool(1, ports={"ssh": sshd.port})
        add_local_user(ctx, SSH_USER, SSH_PASSWORD)
        desktop = api.login(SSH_USER, SSH_PASSWORD)["offers"][0]["desktop"]["id"]
        yield {"id": desktop, "sshd": sshd}


def ssh_session(gateway: Running, launch_url: str, command: str | None = None) -> list[str]:
    url = f"ws://127.0.0.1:{gateway.port}/ws/ssh?ticket={ticket_of(launch_url)}"
    return asyncio.run(ssh_page(url, command, "end-2\r\n"))


# Terminal control sequences (colours, title, bracketed paste) between the lines.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
COMMAND = "echo gateway-$((6*7))-ok; whoami; echo end-$((1+1))"


def output_lines(terminal: str) -> list[str]:
    """The command's output: the lines from its first result to its last."""
    plain = ANSI.sub("", terminal)
    lines = [line.rstrip("\r").split("\r")[-1].strip() for line in plain.split("\n")]
    start = lines.index("gateway-42-ok")
    return lines[start : lines.index("end-2") + 1]


def _ssh_connect(broker: Running, desktop: str) -> dict[str, Any]:
    token = user_token(broker, SSH_USER, SSH_PASSWORD)
    return connect_from(broker, token, desktop, OUTSIDE, {"protocol": "html5-ssh"})


def test_ssh_through_the_gateway_checks_the_host_key(
    api: Api, ctx: BrokerContext, ssh_desktop: dict[str, Any]
) -> None:
    desktop, sshd = ssh_desktop["id"], ssh_desktop["sshd"]
    assert isinstance(sshd, PrivateSshd)
    # Keys are checked at the edge.
    for bad in (["ssh-ed25519"], ["ssh-dss AAAAB3NzaC1kc3M="], ["ssh-ed25519 not*base64"]):
        api.patch(f"desktops/{desktop}", {"ssh_host_keys": bad}, status=422)
    kind, data = sshd.host_key.split()[:2]
    wrong_type = api.patch(f"desktops/{desktop}", {"ssh_host_keys": [f"ssh-rsa {data}"]}, 422)
    assert "not a ssh-rsa key" in wrong_type["detail"]
    with broker_and_gateway(ctx) as (broker, gateway):
        # No key known and the broker does not learn: no password goes to the desktop.
        unknown = ssh_session(gateway, _ssh_connect(broker, desktop)["launch_url"])
        assert unknown == [
            "status: the SSH host key of desktop lab-000 is not known, so no password is sent "
            "to it; an administrator sets the desktop's ssh_host_keys (or the gateway's "
            "known_hosts file)"
        ]
        # Another host's key: the desktop is refused before any password.
        other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
        api.patch(f"desktops/{desktop}", {"ssh_host_keys": [other]})
        mismatch = ssh_session(gateway, _ssh_connect(broker, desktop)["launch_url"])
        assert mismatch[-1] == (
            "status: desktop lab-000 showed an SSH host key that is not the one known for it; "
            "the login was stopped (ask an administrator)"
        )
        # Its own key (with the comment .pub files carry, dropped): the login goes on and
        # the command's real output comes back through the gateway.
        saved = api.patch(f"desktops/{desktop}", {"ssh_host_keys": [sshd.host_key + " root@x"]})
        assert saved["ssh_host_keys"] == [f"{kind} {data}"]
        session = ssh_session(gateway, _ssh_connect(broker, desktop)["launch_url"], COMMAND)
        assert session[0] == f"prompt: {SSH_USER}@lab-000's password: "
        assert output_lines(session[-1]) == ["gateway-42-ok", SSH_USER, "end-2"]


def test_the_broker_learns_a_host_key_on_first_use_when_told_to(
    api: Api, ctx: BrokerContext, ssh_desktop: dict[str, Any]
) -> None:
    desktop, sshd = ssh_desktop["id"], ssh_desktop["sshd"]
    ctx.settings.gateway_ssh_learn_host_keys = True
    with broker_and_gateway(ctx) as (broker, gateway):
        first = ssh_session(gateway, _ssh_connect(broker, desktop)["launch_url"], COMMAND)
        assert output_lines(first[-1]) == ["gateway-42-ok", SSH_USER, "end-2"]
        deadline = time.monotonic() + 10
        while not api.get(f"desktops/{desktop}")["ssh_host_keys"] and time.monotonic() < deadline:
            time.sleep(0.1)
        # Pinned: the key the desktop showed, as its .pub file has it.
        assert api.get(f"desktops/{desktop}")["ssh_host_keys"] == [
            " ".join(sshd.host_key.split()[:2])
        ]
        [learned] = api.get("events?kind=gateway.hostkey")["items"]
        assert learned["desktop_id"] == desktop
        # The next ticket carries it: no learning any more, the key is checked.
        again = _ssh_connect(broker, desktop)
        claims = tickets.verify(
            ticket_of(again["launch_url"]),
            ctx.settings.gateway_key,
            now=int(time.time()),
            gateway_id=ctx.settings.gateway_id,
        )
        assert claims.host_keys == (" ".join(sshd.host_key.split()[:2]),)
        assert not claims.learn_host_key


def test_the_gateways_ssh_reads_no_ssh_config_of_its_own_account(
    api: Api,
    ctx: BrokerContext,
    ssh_desktop: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gateway's account may have a ~/.ssh/config (an operator's own jump host, say):
    the desktop's connection is the ticket's alone, never rerouted or re-pointed by it."""
    desktop, sshd = ssh_desktop["id"], ssh_desktop["sshd"]
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host *\n  ProxyJump nobody@127.0.0.1:{free_port()}\n  HostName 127.0.0.9\n"
    )
    monkeypatch.setenv("HOME", str(home))
    api.patch(f"desktops/{desktop}", {"ssh_host_keys": [sshd.host_key]})
    with broker_and_gateway(ctx) as (broker, gateway):
        session = ssh_session(gateway, _ssh_connect(broker, desktop)["launch_url"], COMMAND)
    assert output_lines(session[-1]) == ["gateway-42-ok", SSH_USER, "end-2"], session

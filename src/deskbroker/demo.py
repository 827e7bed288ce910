"""``deskbroker demo``: a broker on SQLite with real Xvnc desktops, and its self-test."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.progress import Progress

from deskbroker import xvnc
from deskbroker.api.app import create_app
from deskbroker.bootstrap import add_local_user, ensure_defaults
from deskbroker.config import Settings
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.store.desktop_rows import count_ready_named

console = Console()
ADMIN = ("admin", "deskbroker-admin")
DEMO_USER = ("demo", "deskbroker-demo")
VNC_PASSWORD = "demo-vnc"
# /metrics asks for a bearer token; the demo, on loopback only, publishes its own.
METRICS_TOKEN = "demo-metrics-token"


@dataclass
class DemoEnvironment:
    url: str
    desktops: list[xvnc.XvncDesktop] = field(default_factory=list)
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None
    engine: Engine | None = None
    cloud: subprocess.Popen[bytes] | None = None
    cloud_url: str | None = None

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
        if self.engine is not None:
            self.engine.stop(wait=False)
        if self.cloud is not None:
            # cloudsim stops its instances' desktops when it is told to stop.
            self.cloud.send_signal(signal.SIGTERM)
            try:
                self.cloud.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.cloud.kill()
        for desktop in self.desktops:
            desktop.stop()


CLOUD_DESKTOPS = 2


def _start_cloud(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The simulated OpenStack cloud, in its own process (the broker never imports it)."""
    port = _free_port()
    log = (data_dir / "cloudsim.log").open("ab")
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloudsim.cli",
            "openstack",
            "--port",
            str(port),
            "--projects",
            "demo",
            "--backing",
            "xvnc",
            "--vnc-password",
            VNC_PASSWORD,
            "--metadata-port",
            "-1",
            "--quota",
            "instances=20,cores=100,ram=409600",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/_sim", timeout=2).raise_for_status()
            return child, url
        except httpx.HTTPError:
            if child.poll() is not None or time.monotonic() > deadline:
                child.kill()
                raise RuntimeError("the simulated cloud did not start; see cloudsim.log") from None
            time.sleep(0.1)


def _wait_for_cloud_desktops(ctx: BrokerContext, quiet: bool) -> None:
    """Show the cloud pool being built, until its desktops can be handed out."""
    with Progress(console=console, transient=True, disable=quiet) as progress:
        task = progress.add_task("building cloud desktops", total=CLOUD_DESKTOPS)
        deadline = time.monotonic() + 120
        while True:
            with ctx.db.read() as session:
                ready = count_ready_named(session, "demo-vm-")
            progress.update(task, completed=min(ready, CLOUD_DESKTOPS))
            if ready >= CLOUD_DESKTOPS:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the cloud desktops were not built in 120 s")
            time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _seed(url: str, desktops: list[xvnc.XvncDesktop], cloud_url: str | None) -> None:
    """Configure the demo through the public API, as an operator would."""
    with httpx.Client(base_url=url, timeout=30) as http:
        token = http.post(
            "/api/v1/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]}
        ).json()["token"]
        http.headers["Authorization"] = f"Bearer {token}"

        def ensure(path: str, body: dict[str, Any]) -> dict[str, Any]:
            found = http.get(f"/api/v1/admin/{path}", params={"name": body["name"]}).json()
            if found["items"]:
                item: dict[str, Any] = found["items"][0]
                patch = {k: v for k, v in body.items() if k not in ("name", "kind")}
                if patch:
                    response = http.patch(f"/api/v1/admin/{path}/{item['id']}", json=patch)
                    response.raise_for_status()
                    item = response.json()
                return item
            response = http.post(f"/api/v1/admin/{path}", json=body)
            response.raise_for_status()
            created: dict[str, Any] = response.json()
            return created

        center = ensure(
            "centers",
            {
                "name": "demo-lab",
                "kind": "static",
                "params": {
                    "machines": [
                        {
                            "name": f"demo-desktop-{i + 1}",
                            "address": d.address,
                            "os": "Linux (Xvnc)",
                            "ports": {"vnc": d.port},
                        }
                        for i, d in enumerate(desktops)
                    ]
                },
            },
        )
        plan = ensure("protocol-plans", {"name": "vnc-first", "protocols": [{"protocol": "vnc"}]})
        pool = ensure("pools", {"name": "demo-pool", "center_ids": [center["id"]]})
        entries = [{"pool_id": pool["id"], "protocol_plan_id": plan["id"]}]
        if cloud_url is not None:
            cloud = ensure(
                "centers",
                {
                    "name": "demo-cloud",
                    "kind": "openstack",
                    "params": {
                        "auth_url": f"{cloud_url}/identity/v3",
                        "project_name": "demo",
                        "username": "demo",
                        "default_network": "private",
                    },
                    "secrets": {"password": "password"},
                    "scan_interval_s": 30,
                },
            )
            cloud_pool = ensure(
                "pools",
                {
                    "name": "demo-cloud-pool",
                    "center_ids": [cloud["id"]],
                    "provisioning": {
                        "enabled": True,
                        "min_unassigned": CLOUD_DESKTOPS,
                        "max_total": CLOUD_DESKTOPS + 2,
                        "parameters": {
                            "name_template": "demo-vm-{SEQUENCE:2}",
                            "image": "ubuntu-22.04-desktop",
                            "flavor": "m1.small",
                        },
                    },
                },
            )
            entries.append({"pool_id": cloud_pool["id"], "protocol_plan_id": plan["id"]})
        policy = ensure(
            "policies",
            {"name": "demo-policy", "max_desktops_per_user": len(entries), "entries": entries},
        )
        source = http.get("/api/v1/admin/identity-sources", params={"kind": "local"}).json()
        source_id = source["items"][0]["id"]
        rules = http.get(
            "/api/v1/admin/assignment-rules", params={"identity_source_id": source_id}
        ).json()
        if not rules["items"]:
            http.post(
                "/api/v1/admin/assignment-rules",
                json={
                    "identity_source_id": source_id,
                    "name": "everyone",
                    "policy_id": policy["id"],
                },
            ).raise_for_status()


@contextlib.contextmanager
def environment(
    *, port: int, desktops: int, data_dir: Path, quiet: bool = False, cloud: bool = True
) -> Iterator[DemoEnvironment]:
    """Xvnc desktops on 127.0.0.11.. behind a static center, a simulated OpenStack
    project whose instances are Xvnc desktops too, and a broker on SQLite that builds
    the cloud pool; all stopped on exit."""
    # Every demo server (cloudsim, the Xvnc desktops) listens on loopback, which the
    # outbound policy denies by default.
    settings = Settings(
        data_dir=data_dir, port=port, outbound_allow="127.0.0.0/8", metrics_token=METRICS_TOKEN
    )
    ctx = BrokerContext.from_settings(settings)
    ensure_defaults(ctx)
    add_local_user(ctx, ADMIN[0], ADMIN[1], role="global_admin")
    add_local_user(ctx, DEMO_USER[0], DEMO_USER[1])
    url = f"http://127.0.0.1:{port}"
    env = DemoEnvironment(url=url)
    try:
        password_file = xvnc.write_password_file(data_dir / "vncpasswd", VNC_PASSWORD)
        with Progress(console=console, transient=True, disable=quiet) as progress:
            task = progress.add_task("starting Xvnc desktops", total=desktops)
            for i in range(desktops):
                env.desktops.append(xvnc.start(f"127.0.0.{11 + i}", password_file=password_file))
                progress.advance(task)
        if cloud:
            env.cloud, env.cloud_url = _start_cloud(data_dir)
        env.engine = Engine(ctx)
        env.engine.start()
        config = uvicorn.Config(
            create_app(ctx),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            proxy_headers=False,
        )
        env.server = uvicorn.Server(config)
        env.thread = threading.Thread(target=env.server.run, daemon=True)
        env.thread.start()
        deadline = time.monotonic() + 20
        while not env.server.started:
            if time.monotonic() > deadline or not env.thread.is_alive():
                raise RuntimeError(f"the broker did not start on port {port}")
            time.sleep(0.05)
        _seed(url, env.desktops, env.cloud_url)
        if env.cloud_url is not None:
            _wait_for_cloud_desktops(ctx, quiet)
        yield env
    finally:
        env.stop()
        ctx.db.dispose()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(*, port: int, desktops: int, data_dir: Path | None) -> None:
    """Serve the demo until interrupted."""
    # SIGTERM (a service manager, `kill`) stops the desktops just as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    directory = (data_dir or Path.cwd() / ".deskbroker" / "demo").resolve()
    directory.mkdir(parents=True, exist_ok=True)
    with environment(port=port, desktops=desktops, data_dir=directory) as env:
        console.print(f"[bold green]deskbroker demo[/] is serving at {env.url}")
        console.print(f"  API docs      {env.url}/api/v1/docs")
        console.print(f"  admin         {ADMIN[0]} / {ADMIN[1]}")
        console.print(f"  user          {DEMO_USER[0]} / {DEMO_USER[1]}")
        console.print(f"  VNC password  {VNC_PASSWORD}")
        console.print(f"  metrics token {METRICS_TOKEN}")
        for d in env.desktops:
            console.print(f"  desktop       {d.address}:{d.port} (Xvnc :{d.display})")
        if env.cloud_url is not None:
            console.print(
                f"  cloud         {env.cloud_url} (cloudsim: OpenStack with Xvnc instances)"
            )
        console.print("  self-test     deskbroker demo --selftest --url " + env.url)
        console.print("Ctrl-C stops the broker and the desktops.")
        with contextlib.suppress(KeyboardInterrupt):
            while env.thread is not None and env.thread.is_alive():
                time.sleep(0.5)


class SelftestFailure(Exception):
    pass


def _check(url: str) -> list[str]:
    steps: list[str] = []
    with httpx.Client(base_url=url, timeout=30) as http:
        try:
            ready = http.get("/readyz")
        except httpx.HTTPError as exc:
            raise SelftestFailure(f"the broker at {url} does not answer: {exc}") from exc
        if ready.status_code != 200:
            raise SelftestFailure(f"/readyz says {ready.status_code}: {ready.text}")
        steps.append("broker is ready")
        login = http.post(
            "/api/v1/auth/login", json={"username": DEMO_USER[0], "password": DEMO_USER[1]}
        )
        if login.status_code != 200:
            raise SelftestFailure(f"log in as {DEMO_USER[0]} failed: {login.text}")
        body = login.json()
        steps.append(f"logged in as {body['username']}")
        http.headers["Authorization"] = f"Bearer {body['token']}"
        mine = http.get("/api/v1/client/desktops").json()
        if not mine["desktops"]:
            raise SelftestFailure(f"no desktop was assigned; offers: {body['offers']}")
        # Every desktop the user holds: the cloud instance and the static machine.
        for desktop in mine["desktops"]:
            steps.extend(_check_desktop(http, desktop))
    return steps


def _check_desktop(http: httpx.Client, desktop: dict[str, Any]) -> list[str]:
    steps = [f"assigned {desktop['name']} at {desktop['address']}"]
    connect = http.post(
        f"/api/v1/client/desktops/{desktop['id']}/connect", json={"protocol": "vnc"}
    )
    if connect.status_code != 200:
        raise SelftestFailure(f"connect to {desktop['name']} failed: {connect.text}")
    descriptor = connect.json()
    if "[Connection]" not in descriptor["content"]:
        raise SelftestFailure("the VNC descriptor has no [Connection] section")
    steps.append(f"got {descriptor['filename']} for {descriptor['host']}:{descriptor['port']}")
    try:
        banner = xvnc.read_banner(descriptor["host"], descriptor["port"])
    except OSError as exc:
        raise SelftestFailure(
            f"cannot reach {descriptor['host']}:{descriptor['port']}: {exc}"
        ) from exc
    if not banner.startswith("RFB "):
        raise SelftestFailure(f"expected an RFB banner, got {banner!r}")
    steps.append(f"{desktop['name']}'s VNC server answered {banner!r}")
    return steps


def selftest(*, url: str | None, desktops: int) -> int:
    """Run log in → offers → connect → descriptor → RFB banner; 0 when all pass."""
    try:
        if url is not None:
            steps = _check(url)
        else:
            with (
                tempfile.TemporaryDirectory(prefix="deskbroker-selftest-") as tmp,
                environment(
                    port=_free_port(), desktops=max(1, desktops), data_dir=Path(tmp), quiet=True
                ) as env,
            ):
                steps = _check(env.url)
    except (SelftestFailure, xvnc.XvncUnavailable, RuntimeError, TimeoutError) as exc:
        message = exc.detail if isinstance(exc, xvnc.XvncUnavailable) else str(exc)
        console.print(f"[bold red]self-test failed:[/] {message}")
        return 1
    for step in steps:
        console.print(f"[green]✓[/] {step}")
    console.print("[bold green]self-test passed[/]")
    return 0

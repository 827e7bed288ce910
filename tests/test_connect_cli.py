"""``deskbroker connect``: the real CLI against a real broker over HTTP on 127.0.0.1,
with real Xvnc desktops (a static center, and a simulated OpenStack cloud whose
instances are Xvnc desktops). Viewers are fake programs on PATH that record what they
were given, and, once, TigerVNC's real viewer."""

from __future__ import annotations

import configparser
import os
import random
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from cloudsim.server import CloudSim
from deskbroker import xvnc
from deskbroker.bootstrap import add_local_user
from deskbroker.cli import app
from deskbroker.services.context import BrokerContext
from tests.authenticator import Authenticator
from tests.connect_support import (
    client_env,
    free_port,
    install_fake_viewers,
    live_broker,
    viewer_runs,
)
from tests.helpers import USER_PASSWORD, Api, run_queued_scan, scan_now
from tests.tools import XVNC, Tool, require

VNCVIEWER = Tool("vncviewer", "tigervnc-viewer")


def _xvnc(address: str) -> xvnc.XvncDesktop:
    # Other test runs on this machine start X servers too: a display of our own range.
    return xvnc.start(address, port=free_port(), first_display=random.randrange(300, 900))


@pytest.fixture
def desktops() -> Iterator[list[xvnc.XvncDesktop]]:
    require(XVNC)
    started: list[xvnc.XvncDesktop] = []
    try:
        for i in range(2):
            started.append(_xvnc(f"127.0.0.{61 + i}"))
        yield started
    finally:
        for desktop in started:
            desktop.stop()


@pytest.fixture
def broker(ctx: BrokerContext) -> Iterator[str]:
    with live_broker(ctx) as url:
        yield url


def _static_pool(api: Api, desktops: list[xvnc.XvncDesktop], plan: list[dict[str, Any]]) -> None:
    center = api.post(
        "centers",
        {
            "name": "lab-center",
            "kind": "static",
            "params": {
                "machines": [
                    {"name": f"lab-{i}", "address": d.address, "ports": {"vnc": d.port}}
                    for i, d in enumerate(desktops)
                ]
            },
        },
    )
    pool = api.post("pools", {"name": "lab", "center_ids": [center["id"]]})
    protocols = api.post("protocol-plans", {"name": "lab-plan", "protocols": plan})
    policy = api.post(
        "policies",
        {
            "name": "lab-policy",
            "entries": [{"pool_id": pool["id"], "protocol_plan_id": protocols["id"]}],
        },
    )
    api.post("assignment-rules", {"identity_source_id": api.source_id(), "policy_id": policy["id"]})
    api.ids.update(pool=pool["id"], center=center["id"])


class User:
    """One person's CLI: their own config and cache folders, their own PATH."""

    def __init__(self, home: Path, *viewers: str, system_path: bool = False) -> None:
        self.home = home
        self.bin = home / "bin"
        self.log = install_fake_viewers(self.bin, *viewers)
        self.env = client_env(home, self.bin, system_path=system_path)
        self.runner = CliRunner()

    def run(self, *args: str, input: str | None = None, code: int = 0) -> Result:
        result = self.runner.invoke(app, ["connect", *args], input=input, env=self.env)
        assert result.exit_code == code, (result.output, result.exception)
        return result

    def login(self, url: str, name: str) -> Result:
        return self.run(
            "login", "--url", url, "--user", name, "--password-stdin", input=USER_PASSWORD + "\n"
        )

    @property
    def token_file(self) -> Path:
        return self.home / "config" / "deskbroker" / "token.json"

    def launch_files(self) -> list[Path]:
        return sorted((self.home / "cache" / "deskbroker" / "launch").iterdir())


def test_log_in_list_connect_and_release(
    api: Api, broker: str, desktops: list[xvnc.XvncDesktop], tmp_path: Path
) -> None:
    _static_pool(api, desktops, [{"protocol": "vnc", "settings": {"view_only": True}}])
    add_local_user(api.ctx, "user0", USER_PASSWORD)
    alice = User(tmp_path / "alice", "vncviewer")

    signed = alice.login(broker, "user0")
    assert f"signed in at {broker} as user0" in signed.output
    assert "desktop lab-0 is yours" in signed.output
    # The token cache is the user's alone; the broker's URL is in the config file.
    assert stat.S_IMODE(alice.token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(alice.token_file.parent.stat().st_mode) == 0o700
    config = (tmp_path / "alice" / "config" / "deskbroker" / "config.toml").read_text()
    assert config == f'url = "{broker}"\n'

    listed = alice.run("list").output
    assert "lab-0" in listed and desktops[0].address in listed

    opened = alice.run("open").output
    assert "opening lab-0 (vnc) with vncviewer" in opened
    [run] = viewer_runs(alice.log)
    target = f"{desktops[0].address}::{desktops[0].port}"
    assert run["argv"][1:] == ["-Shared=1", "-ViewOnly", target]
    # The viewer reached the real Xvnc desktop the broker pointed it at.
    assert run["banner"].startswith("RFB 003.")
    [launch_file] = alice.launch_files()
    assert stat.S_IMODE(launch_file.stat().st_mode) == 0o600
    parsed = configparser.ConfigParser()
    parsed.read_string(launch_file.read_text())
    assert parsed["Connection"]["Port"] == str(desktops[0].port)

    # A cache someone widened is closed again before it is used.
    alice.token_file.chmod(0o644)
    alice.run("list")
    assert stat.S_IMODE(alice.token_file.stat().st_mode) == 0o600

    assert "released lab-0" in alice.run("release", "lab-0").output
    assert "you hold no desktop" in alice.run("list").output
    assert "you hold no desktop called 'lab-0'" in alice.run("release", "lab-0", code=1).output

    assert "signed out" in alice.run("logout").output
    assert not alice.token_file.exists()
    assert "you are not signed in" in alice.run("list", code=1).output


def test_rdp_file_for_xfreerdp_and_file_only(
    api: Api, broker: str, desktops: list[xvnc.XvncDesktop], tmp_path: Path
) -> None:
    _static_pool(
        api,
        desktops,
        [{"protocol": "rdp", "port": 3390, "settings": {"multimon": True}}, {"protocol": "vnc"}],
    )
    add_local_user(api.ctx, "user0", USER_PASSWORD)
    bob = User(tmp_path / "bob", "xfreerdp", "vncviewer")
    bob.login(broker, "user0")

    assert "with xfreerdp" in bob.run("open", "lab-0").output
    [run] = viewer_runs(bob.log)
    [path] = run["argv"][1:]
    assert path.endswith("lab-0.rdp")
    lines = run["files"][path].split("\r\n")
    assert f"full address:s:{desktops[0].address}:3390" in lines
    assert "username:s:user0" in lines and "use multimon:i:1" in lines

    # A protocol by name; --file-only writes the file and starts nothing.
    written = bob.run("open", "--protocol", "vnc", "--file-only").output
    assert "launch file for lab-0:" in written
    assert (bob.home / "cache" / "deskbroker" / "launch" / "lab-0.vnc").exists()
    time.sleep(0.3)
    assert len(viewer_runs(bob.log)) == 1
    refused = bob.run("open", "--protocol", "spice", code=1).output
    assert "protocol 'spice' is not offered for this desktop; offered: rdp, vnc" in refused


def test_without_a_viewer_the_launch_file_is_written(
    api: Api, broker: str, desktops: list[xvnc.XvncDesktop], tmp_path: Path
) -> None:
    # The plan prefers RDP; with only a VNC viewer here the CLI is given VNC.
    _static_pool(api, desktops, [{"protocol": "rdp"}, {"protocol": "vnc"}])
    add_local_user(api.ctx, "user0", USER_PASSWORD)
    carol = User(tmp_path / "carol", "vncviewer")
    carol.login(broker, "user0")
    assert "with vncviewer" in carol.run("open").output
    dave = User(tmp_path / "dave")
    dave.login(broker, "user0")
    shown = dave.run("open").output
    assert "no rdp viewer found on PATH; launch file for lab-0:" in shown
    assert [p.name for p in dave.launch_files()] == ["lab-0.rdp"]


def test_wrong_password_and_absent_broker_are_told_in_words(
    api: Api, broker: str, tmp_path: Path
) -> None:
    add_local_user(api.ctx, "user0", USER_PASSWORD)
    erin = User(tmp_path / "erin")
    wrong = erin.run(
        "login", "--url", broker, "-u", "user0", "--password-stdin", input="nope\n", code=1
    )
    assert "sign-in failed: Wrong username or password." in wrong.output
    assert not erin.token_file.exists()
    gone = erin.run(
        "login",
        "--url",
        "http://127.0.0.1:9",
        "-u",
        "user0",
        "--password-stdin",
        input="x\n",
        code=1,
    )
    assert "the broker at http://127.0.0.1:9 does not answer" in gone.output
    assert "which broker?" in User(tmp_path / "frank").run("login", code=2).output


def test_waiting_in_the_queue_until_a_desktop_is_released(
    api: Api, broker: str, desktops: list[xvnc.XvncDesktop], tmp_path: Path
) -> None:
    _static_pool(api, desktops[:1], [{"protocol": "vnc"}])
    for name in ("user0", "user1"):
        add_local_user(api.ctx, name, USER_PASSWORD)
    holder = api.login("user0")
    held = holder["offers"][0]["desktop"]["id"]
    grace = User(tmp_path / "grace", "vncviewer")
    signed = grace.login(broker, "user1").output
    assert "you are number 1 in the queue" in signed

    # The real CLI, as a process, waits in the queue while the holder gives it back.
    waiting = subprocess.Popen(
        [sys.executable, "-m", "deskbroker.cli", "connect", "open", "--poll", "0.2"],
        env={
            **os.environ,
            **grace.env,
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert waiting.stdout is not None
        # Released only once the CLI says it waits.
        while not any("queued:" in line for line in lines):
            line = waiting.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        released = api.client.post(
            f"/api/v1/client/desktops/{held}/release",
            headers={"Authorization": f"Bearer {holder['token']}"},
        )
        assert released.status_code == 204, released.text
        rest, _ = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    output = "".join(lines) + rest
    assert waiting.returncode == 0, output
    assert "queued: all desktops in lab are in use; you are number 1 in the queue" in output
    assert "your turn: lab-0 is yours" in output
    [run] = viewer_runs(grace.log)
    assert run["argv"][-1] == f"{desktops[0].address}::{desktops[0].port}"
    assert run["banner"].startswith("RFB 003.")


@pytest.fixture
def cloud() -> Iterator[CloudSim]:
    require(XVNC)
    # Other test runs on this machine run simulated clouds on the same loopback
    # addresses: a VNC port and displays of our own.
    simulator = CloudSim(
        projects=["demo"],
        clock_speed=20.0,
        backing="xvnc",
        vnc_port=free_port(),
        display_base=random.randrange(300, 900),
    ).start()
    yield simulator
    simulator.stop()


def test_a_stopped_desktop_is_started_with_progress_then_opened(
    api: Api, cloud: CloudSim, broker: str, tmp_path: Path
) -> None:
    cloud.seed_servers(1, name_prefix="vdi", with_backing=True)
    made = api.post(
        "centers",
        {
            "name": "cloud",
            "kind": "openstack",
            "params": {
                "auth_url": cloud.auth_url,
                "project_name": "demo",
                "username": "demo",
                "retry_base_s": 0.01,
            },
            "secrets": {"password": "password"},
        },
    )
    assert run_queued_scan(api, made["id"])["status"] == "ok"
    pool = api.post("pools", {"name": "cloud", "center_ids": [made["id"]]})
    plan = api.post(
        "protocol-plans",
        {"name": "vnc", "protocols": [{"protocol": "vnc", "port": cloud.config.vnc_port}]},
    )
    policy = api.post(
        "policies",
        {"name": "cloud", "entries": [{"pool_id": pool["id"], "protocol_plan_id": plan["id"]}]},
    )
    api.post("assignment-rules", {"identity_source_id": api.source_id(), "policy_id": policy["id"]})
    add_local_user(api.ctx, "user0", USER_PASSWORD)
    [server] = cloud.servers("demo")
    cloud.set_server_state(server["id"], "SHUTOFF")
    scan_now(api, made["id"])

    address = cloud.server_address(server["id"])
    assert address is not None
    # Shut off, the instance's desktop does not answer.
    with pytest.raises(OSError):
        socket.create_connection((address, cloud.config.vnc_port), timeout=2).close()

    heidi = User(tmp_path / "heidi", "vncviewer")
    heidi.login(broker, "user0")
    assert "stopped" in heidi.run("list").output
    opened = heidi.run("open", "--timeout", "60").output
    assert "starting: desktop vdi-" in opened and "should be ready in about" in opened
    assert "opening vdi-" in opened
    [run] = viewer_runs(heidi.log)
    assert run["argv"][-1] == f"{address}::{cloud.config.vnc_port}"
    # The cloud's instance is a real Xvnc desktop again, and the viewer reached it.
    assert run["banner"].startswith("RFB 003."), (run, cloud.servers("demo"), cloud.desktops())
    assert "running" in heidi.run("list").output


def _established_to(port: int) -> int:
    """TCP connections in state ESTABLISHED whose remote end is ``port`` on this host."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].split(":")[1], 16)
            if remote_port == port and fields[3] == "01":
                count += 1
    return count


def test_tigervnc_viewer_really_connects(
    api: Api, broker: str, desktops: list[xvnc.XvncDesktop], tmp_path: Path
) -> None:
    """The real ``vncviewer`` (TigerVNC), on a screen of its own, connects to the desktop
    with the command line the CLI builds."""
    require(VNCVIEWER)
    _static_pool(api, desktops[:1], [{"protocol": "vnc"}])
    add_local_user(api.ctx, "user0", USER_PASSWORD)
    # The viewer's own screen: another Xvnc, which takes the viewer with it when stopped.
    screen = _xvnc("127.0.0.70")
    try:
        ivan = User(tmp_path / "ivan", system_path=True)
        ivan.env["DISPLAY"] = f":{screen.display}"
        ivan.login(broker, "user0")
        port = desktops[0].port
        before = _established_to(port)
        assert "with vncviewer" in ivan.run("open").output
        deadline = time.monotonic() + 15
        while _established_to(port) <= before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _established_to(port) > before, "vncviewer did not connect to the desktop"
    finally:
        screen.stop()


def test_a_second_factor_is_asked_for(
    api: Api, broker: str, desktops: list[xvnc.XvncDesktop], tmp_path: Path
) -> None:
    _static_pool(api, desktops, [{"protocol": "vnc"}])
    api.patch(f"identity-sources/{api.source_id()}", {"second_factor": "optional"})
    add_local_user(api.ctx, "user0", USER_PASSWORD)
    token = api.login("user0")["token"]
    started = api.client.post("/api/v1/me/totp", headers={"Authorization": f"Bearer {token}"})
    assert started.status_code == 201, started.text
    phone = Authenticator(started.json()["secret"])
    confirmed = api.client.post(
        "/api/v1/me/totp/confirm",
        json={"code": phone.code()},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert confirmed.status_code == 204, confirmed.text

    judy = User(tmp_path / "judy")
    args = ("login", "--url", broker, "-u", "user0", "--password-stdin")
    wrong = judy.run(*args, input=f"{USER_PASSWORD}\n{phone.wrong()}\n", code=1)
    assert "sign-in failed:" in wrong.output and not judy.token_file.exists()
    signed = judy.run(*args, input=f"{USER_PASSWORD}\n{phone.code()}\n")
    assert "one-time code" in signed.output and "signed in at" in signed.output
    assert stat.S_IMODE(judy.token_file.stat().st_mode) == 0o600


def test_ssh_runs_in_the_terminal_with_the_plans_user(
    api: Api, broker: str, desktops: list[xvnc.XvncDesktop], tmp_path: Path
) -> None:
    _static_pool(
        api,
        desktops,
        [
            {"protocol": "html5-vnc"},
            {"protocol": "ssh", "settings": {"user_template": "ubuntu", "x11_forwarding": True}},
        ],
    )
    add_local_user(api.ctx, "user0", USER_PASSWORD)
    kim = User(tmp_path / "kim", "ssh")
    kim.login(broker, "user0")
    # The plan's HTML5 protocol is for browsers: the CLI is given SSH, its viewer.
    assert "opening lab-0 (ssh) with ssh" in kim.run("open").output
    [run] = viewer_runs(kim.log, timeout_s=1)
    assert run["argv"][1:] == ["-X", "-p", "22", f"ubuntu@{desktops[0].address}"]


def test_a_desktop_offered_in_the_browser_only_says_so(
    api: Api, broker: str, desktops: list[xvnc.XvncDesktop], tmp_path: Path
) -> None:
    _static_pool(api, desktops, [{"protocol": "html5-vnc"}])
    add_local_user(api.ctx, "user0", USER_PASSWORD)
    lea = User(tmp_path / "lea", "vncviewer")
    lea.login(broker, "user0")
    refused = lea.run("open", code=1).output
    # The broker has no gateway here, so it says so (the CLI passes its words on).
    assert "html5-vnc needs the gateway" in refused

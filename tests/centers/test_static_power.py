"""Physical machines powered by Wake-on-LAN (a real UDP datagram to 127.0.0.1) and by a
Redfish BMC (a fake BMC over real HTTP: the outer boundary)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from deskbroker.centers.base import Capability, CenterDriver, MachineInfo, PowerAction
from deskbroker.centers.registry import open_driver, validate_params
from deskbroker.domain.states import PowerState
from deskbroker.errors import CenterError, InvalidInput
from deskbroker.write_guard import HeldTransaction, write_unit
from tests.centers.conformance import CenterConformance
from tests.centers.fake_bmc import SESSIONS, FakeBMC
from tests.helpers import Api, run_queued_scan

MAC = "52:54:00:ab:CD:ef"


@pytest.fixture
def bmc() -> Iterator[FakeBMC]:
    served = FakeBMC().start()
    yield served
    served.stop()


@pytest.fixture
def wol_socket() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        yield sock


def _params(bmc: FakeBMC, wol_port: int, **redfish: Any) -> dict[str, Any]:
    return {
        "machines": [
            {
                "name": "lab-1",
                "address": "127.0.3.1",
                "wake_on_lan": {"mac": MAC, "broadcast": "127.0.0.1", "port": wol_port},
            },
            {
                "name": "lab-2",
                "address": "127.0.3.2",
                "redfish": {"url": bmc.url, "username": "operator", **redfish},
            },
            {"name": "lab-3", "address": "127.0.3.3"},
        ]
    }


@pytest.fixture
def driver(bmc: FakeBMC, wol_socket: socket.socket) -> CenterDriver:
    port = wol_socket.getsockname()[1]
    return open_driver("static", _params(bmc, port), {"redfish_password": bmc.password})


@pytest.fixture
def provision_request() -> None:
    return None


def _machine(name: str) -> MachineInfo:
    return MachineInfo(external_id=name, name=name)


class TestPoweredStaticCenter(CenterConformance):
    def test_wake_on_lan_sends_the_magic_packet(
        self, driver: CenterDriver, wol_socket: socket.socket
    ) -> None:
        assert driver.supports(Capability.POWER)
        driver.power(_machine("lab-1"), PowerAction.START)
        packet, _ = wol_socket.recvfrom(1024)
        mac = bytes([0x52, 0x54, 0x00, 0xAB, 0xCD, 0xEF])
        assert len(packet) == 102
        assert packet[:6] == b"\xff" * 6 and packet[6:] == mac * 16
        with pytest.raises(CenterError, match="only Wake-on-LAN: it can be started, not stop"):
            driver.power(_machine("lab-1"), PowerAction.STOP)
        with pytest.raises(CenterError, match="cannot power lab-3"):
            driver.power(_machine("lab-3"), PowerAction.START)

    def test_redfish_resets_with_a_session_that_is_closed(
        self, driver: CenterDriver, bmc: FakeBMC
    ) -> None:
        by_name = {m.name: m for m in driver.inventory()}
        assert by_name["lab-2"].power_state is PowerState.STOPPED
        assert by_name["lab-1"].power_state is PowerState.RUNNING  # WoL alone: assumed on
        assert by_name["lab-2"].attributes["power_control"] == "redfish"
        lab2 = _machine("lab-2")
        driver.power(lab2, PowerAction.START)
        driver.power(lab2, PowerAction.START)  # already on: nothing is sent
        driver.power(lab2, PowerAction.REBOOT)
        driver.power(lab2, PowerAction.REBOOT_HARD)
        driver.power(lab2, PowerAction.STOP)
        assert bmc.resets == ["On", "GracefulRestart", "ForceRestart", "GracefulShutdown"]
        assert driver.machine("lab-2").power_state is PowerState.STOPPED  # type: ignore[union-attr]
        # Every request but the login carried the session; every session was closed, at
        # the BMC (the Location named another host: only its path was used).
        assert all(authed for method, path, authed in bmc.requests if path != SESSIONS)
        assert bmc.sessions == {} and len(bmc.deleted) >= 6
        with pytest.raises(CenterError, match="cannot suspend through its BMC"):
            driver.power(lab2, PowerAction.SUSPEND)

    def test_a_bmc_without_graceful_shutdown_gets_force_off(
        self, driver: CenterDriver, bmc: FakeBMC
    ) -> None:
        bmc.power_state = "On"
        bmc.allowed = ["On", "ForceOff", "ForceRestart"]
        driver.power(_machine("lab-2"), PowerAction.STOP)
        driver.power(_machine("lab-2"), PowerAction.START)
        driver.power(_machine("lab-2"), PowerAction.REBOOT)
        assert bmc.resets == ["ForceOff", "On", "ForceRestart"]
        bmc.allowed = ["On", "ForceOff"]
        with pytest.raises(CenterError, match="allows no reset of type GracefulRestart"):
            driver.power(_machine("lab-2"), PowerAction.REBOOT)

    def test_a_powered_center_is_never_listed_inside_a_write(self, driver: CenterDriver) -> None:
        with write_unit(), pytest.raises(HeldTransaction):
            driver.inventory()


def test_basic_auth_and_refused_credentials_in_words(
    bmc: FakeBMC, wol_socket: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    port = wol_socket.getsockname()[1]
    basic = open_driver(
        "static", _params(bmc, port, auth="basic"), {"redfish_password": bmc.password}
    )
    basic.power(_machine("lab-2"), PowerAction.START)
    assert bmc.resets == ["On"] and bmc.sessions == {} and bmc.deleted == []
    assert not any(path == SESSIONS for _, path, _ in bmc.requests)

    caplog.set_level(logging.DEBUG)
    wrong = open_driver("static", _params(bmc, port), {"redfish_password": "not-it-987"})
    with pytest.raises(CenterError, match="refused the credentials") as refused:
        wrong.power(_machine("lab-2"), PowerAction.STOP)
    assert "not-it-987" not in refused.value.detail and "not-it-987" not in caplog.text
    # A BMC that cannot be read leaves the machine's state unknown; the scan goes on.
    assert wrong.machine("lab-2").power_state is PowerState.UNKNOWN  # type: ignore[union-attr]
    unset = open_driver("static", _params(bmc, port), {})
    with pytest.raises(CenterError, match="secret 'redfish_password'"):
        unset.power(_machine("lab-2"), PowerAction.START)
    assert bmc.resets == ["On"]


def test_a_check_port_tells_on_from_off(wol_socket: socket.socket) -> None:
    port = wol_socket.getsockname()[1]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        check = listener.getsockname()[1]
        wol = {"mac": MAC, "broadcast": "127.0.0.1", "port": port, "check_port": check}
        params = {"machines": [{"name": "pc", "address": "127.0.0.1", "wake_on_lan": wol}]}
        driver = open_driver("static", params, {})
        assert driver.machine("pc").power_state is PowerState.RUNNING  # type: ignore[union-attr]
    assert driver.machine("pc").power_state is PowerState.STOPPED  # type: ignore[union-attr]


def test_bad_power_settings_are_explained() -> None:
    def machine(**extra: Any) -> dict[str, Any]:
        return {"machines": [{"name": "m", "address": "10.0.0.5", **extra}]}

    with pytest.raises(InvalidInput, match=r"wake_on_lan\.mac"):
        validate_params("static", machine(wake_on_lan={"mac": "52:54:00:ab:cd"}))
    with pytest.raises(InvalidInput, match="not an IP address"):
        validate_params("static", machine(wake_on_lan={"mac": MAC, "broadcast": "lan"}))
    with pytest.raises(InvalidInput, match=r"redfish\.url"):
        validate_params("static", machine(redfish={"url": "ftp:x", "username": "u"}))
    with pytest.raises(InvalidInput, match=r"redfish\.system"):
        validate_params(
            "static",
            machine(redfish={"url": "https://bmc", "username": "u", "system": "/etc/x"}),
        )
    # No password among the params: it is a center secret.
    with pytest.raises(InvalidInput, match="password"):
        validate_params(
            "static", machine(redfish={"url": "https://bmc", "username": "u", "password": "p"})
        )


def test_through_the_api_a_scan_reads_the_bmc_and_an_admin_starts_the_machine(
    api: Api, bmc: FakeBMC
) -> None:
    center = api.post(
        "centers",
        {
            "name": "lab",
            "kind": "static",
            "params": {
                "machines": [
                    {
                        "name": "lab-2",
                        "address": "127.0.3.2",
                        "redfish": {"url": bmc.url, "username": "operator"},
                    }
                ]
            },
            "secrets": {"redfish_password": bmc.password},
        },
    )
    assert bmc.password not in str(center)
    scanned = run_queued_scan(api, center["id"])
    assert scanned["status"] == "ok", scanned["status_message"]
    [desktop] = api.get(f"desktops?center_id={center['id']}")["items"]
    assert desktop["power_state"] == "stopped"
    done = api.post(f"desktops/{desktop['id']}/power", {"action": "start"}, status=200)
    assert done["power_state"] == "running" and bmc.resets == ["On"]


def test_a_bmc_that_drips_its_answer_is_given_up_on_at_the_deadline() -> None:
    # One byte every 0.2 s beats every read timeout; only a whole-call deadline ends it.
    stop = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def drip() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                while not stop.wait(0.2):
                    try:
                        conn.sendall(b"X")
                    except OSError:
                        return

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        redfish = {"url": f"http://127.0.0.1:{port}", "username": "u", "timeout_s": 1}
        params = {"machines": [{"name": "m", "address": "10.0.0.5", "redfish": redfish}]}
        driver = open_driver("static", params, {"redfish_password": "p"})
        try:
            with pytest.raises(CenterError, match="no answer within 1 s"):
                driver.power(_machine("m"), PowerAction.START)
        finally:
            stop.set()
            dripper.join(timeout=10)


def test_a_machine_left_out_of_a_powered_centers_list_goes_at_the_next_scan(
    api: Api, bmc: FakeBMC
) -> None:
    """Its list is the operator's word even when a BMC tells the machines' power: a
    machine taken out of it is gone after one scan, not held for a second look as a
    remote cloud's listing would be."""
    machines = [
        {
            "name": f"lab-{i}",
            "address": f"127.0.3.{i}",
            "redfish": {"url": bmc.url, "username": "operator"},
        }
        for i in (2, 3)
    ]
    center = api.post(
        "centers",
        {
            "name": "lab",
            "kind": "static",
            "params": {"machines": machines},
            "secrets": {"redfish_password": bmc.password},
        },
    )
    assert run_queued_scan(api, center["id"])["status"] == "ok"
    assert api.get(f"desktops?center_id={center['id']}")["total"] == 2
    api.patch(f"centers/{center['id']}", {"params": {"machines": machines[:1]}})
    scanned = run_queued_scan(api, center["id"])
    assert scanned["status"] == "ok", scanned["status_message"]
    assert [d["name"] for d in api.get(f"desktops?center_id={center['id']}")["items"]] == ["lab-2"]

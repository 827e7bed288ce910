"""The local center passes the conformance suite with real Xvnc sessions on 127.0.0.1,
and its own promises: VNC authentication, sessions as the session user in a clean
environment, stop and start on the same port, nothing half-made, slots as quota."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from deskbroker.centers.base import (
    CENTER_KEY,
    DESKTOP_KEY,
    CenterDriver,
    MachineInfo,
    PowerAction,
    ProvisionRequest,
    QuotaExceeded,
)
from deskbroker.centers.local import LocalCenter
from deskbroker.centers.local.params import LocalParams
from deskbroker.centers.registry import drivers, open_driver
from deskbroker.domain.states import PowerState
from deskbroker.errors import CenterError
from deskbroker.outbound import host_side_of
from tests.centers import local_host
from tests.centers.conformance import CenterConformance
from tests.centers.local_host import VNC_PASSWORD, center_params, open_local, vnc_login
from tests.helpers import wait_until
from tests.tools import VNCPASSWD, XVNC, require


@pytest.fixture
def state() -> Iterator[Path]:
    require(XVNC, VNCPASSWD)
    yield from local_host.state_dir()


@pytest.fixture
def driver(state: Path) -> Iterator[CenterDriver]:
    made = open_local(state)
    # The conformance suite asks for a machine to look up: one desktop, already there.
    made.create(_request("seed-1"))
    yield made
    local_host.stop_all(made)


def _request(name: str = "vdi-001", **parameters: object) -> ProvisionRequest:
    return ProvisionRequest(
        name=name,
        metadata={
            CENTER_KEY: "center-1",
            DESKTOP_KEY: f"desktop-{name}",
            "deskbroker_task": "task-1",
            "deskbroker_enrol": "a-secret",
        },
        tags=(f"deskbroker-task-{name}",),
        parameters=dict(parameters),
    )


@pytest.fixture
def provision_request() -> ProvisionRequest:
    return _request()


def _first_child(pid: int, within_s: float) -> int | None:
    """The first child process ``pid`` has within ``within_s``, or ``None``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.002)
    return None


def _running(driver: CenterDriver, machine_id: str) -> MachineInfo:
    found = driver.machine(machine_id)
    assert found is not None and found.power_state is PowerState.RUNNING, found
    return found


class TestLocalCenter(CenterConformance):
    def test_a_desktop_takes_its_vnc_password_and_no_other(self, driver: CenterDriver) -> None:
        machine_id = driver.create(_request("vdi-pw", geometry="1024x768"))
        machine = _running(driver, machine_id)
        port = machine.attributes["ports"]["vnc"]
        assert machine.address == "127.0.0.1" and machine.desktop_id == "desktop-vdi-pw"
        banner, types, result = vnc_login(machine.address, port, VNC_PASSWORD)
        assert banner == b"RFB 003.008\n" and types == [2] and result == 0
        assert vnc_login(machine.address, port, "wrong-pw")[2] == 1
        assert machine.attributes["geometry"] == "1024x768"
        # The agent's enrolment secret is not written into the state file.
        assert isinstance(driver, LocalCenter)
        assert "a-secret" not in (driver.state_dir / f"{machine_id}.json").read_text()

    def test_the_session_runs_as_the_session_user_with_a_clean_environment(
        self, driver: CenterDriver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DESKBROKER_DATABASE_URL", "postgresql://secret@db/x")
        assert isinstance(driver, LocalCenter)
        machine_id = driver.create(_request("vdi-env"))
        machine = _running(driver, machine_id)
        saved = driver._load(machine_id)
        assert saved is not None
        expected_uid = 65534 if os.geteuid() == 0 else os.geteuid()
        for pid in (saved["xvnc"][0], saved["session"][0]):
            status = Path(f"/proc/{pid}/status").read_text()
            uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
            assert uids.split()[1:] == [str(expected_uid)] * 4
        environ = Path(f"/proc/{saved['session'][0]}/environ").read_bytes().split(b"\0")
        variables = dict(e.decode().split("=", 1) for e in environ if e)
        assert variables["DISPLAY"] == f":{machine.attributes['display']}"
        assert "DESKBROKER_DATABASE_URL" not in variables
        # xlogo is an X client: it lives because its display is up.
        assert machine.attributes["session"] == "running"
        password_file = driver.state_dir / f"{machine_id}.passwd"
        assert password_file.stat().st_mode & 0o777 == 0o400
        assert password_file.stat().st_uid == expected_uid

    def test_stop_ends_the_processes_and_start_brings_it_back_on_the_same_port(
        self, driver: CenterDriver
    ) -> None:
        machine_id = driver.create(_request("vdi-pow"))
        machine = _running(driver, machine_id)
        port = machine.attributes["ports"]["vnc"]
        assert isinstance(driver, LocalCenter)
        before = driver._load(machine_id)
        assert before is not None
        driver.power(machine, PowerAction.STOP)
        stopped = driver.machine(machine_id)
        assert stopped is not None and stopped.power_state is PowerState.STOPPED
        assert not stopped.fault
        assert not Path(f"/proc/{before['xvnc'][0]}").exists()
        with pytest.raises(OSError):
            vnc_login("127.0.0.1", port, VNC_PASSWORD)
        driver.power(stopped, PowerAction.START)
        again = _running(driver, machine_id)
        assert again.attributes["ports"]["vnc"] == port
        assert again.attributes["display"] == machine.attributes["display"]
        assert vnc_login("127.0.0.1", port, VNC_PASSWORD)[2] == 0
        # Suspend pauses both processes; resume lets them go on.
        driver.power(again, PowerAction.SUSPEND)
        paused = wait_until(
            lambda: (
                (m := driver.machine(machine_id)) and m.power_state is PowerState.SUSPENDED and m
            ),
            "SIGSTOP to pause the desktop",
        )
        driver.power(paused, PowerAction.RESUME)
        assert vnc_login("127.0.0.1", port, VNC_PASSWORD)[2] == 0

    def test_an_xvnc_that_dies_is_an_error_with_its_reason(self, driver: CenterDriver) -> None:
        assert isinstance(driver, LocalCenter)
        machine_id = driver.create(_request("vdi-crash"))
        saved = driver._load(machine_id)
        assert saved is not None
        # Just after it listens, Xvnc forks its keymap compiler (sh -c xkbcomp), which
        # inherits its listening socket. Killed then, it leaves the helper holding its
        # port (CI found the restart's port taken): the helper is paused so it outlives
        # Xvnc every time, not only on a loaded machine, and the restart must end it.
        helper = _first_child(saved["xvnc"][0], within_s=2.0)
        if helper:
            os.kill(helper, signal.SIGSTOP)
        os.kill(saved["xvnc"][0], signal.SIGKILL)
        try:
            crashed = wait_until(
                lambda: (
                    (m := driver.machine(machine_id)) and m.power_state is PowerState.ERROR and m
                )
            )
            assert "Xvnc ended on its own" in crashed.fault
            driver.power(crashed, PowerAction.START)
            _running(driver, machine_id)
        finally:
            if helper:  # ended by the restart; here only if the test failed before it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(helper, signal.SIGKILL)

    def test_slots_are_the_quota(self, state: Path) -> None:
        driver = open_local(state, slots=1)
        try:
            driver.create(_request("only-1"))
            with pytest.raises(QuotaExceeded, match="slots are all in use"):
                driver.create(_request("one-too-many"))
            assert len(driver.inventory()) == 1
        finally:
            local_host.stop_all(driver)

    def test_a_changed_range_never_reuses_a_stopped_desktops_port(self, state: Path) -> None:
        first = open_local(state, slots=2)
        try:
            kept = _running(first, first.create(_request("kept-1")))
            first.power(kept, PowerAction.STOP)
            port, display = kept.attributes["ports"]["vnc"], kept.attributes["display"]
            # The range moves down by one: its slot 1 is now the stopped desktop's port.
            moved = {
                **first.local_params.model_dump(),
                "first_port": port - 1,
                "first_display": display - 1,
            }
            second = open_driver("local", moved, {"vnc_password": VNC_PASSWORD})
            new = second.machine(second.create(_request("new-1")))
            assert new is not None
            assert (new.attributes["ports"]["vnc"], new.attributes["display"]) == (
                port - 1,
                display - 1,
            )
            # Two desktops held: the two slots are the quota, whatever their numbers.
            with pytest.raises(QuotaExceeded):
                second.create(_request("new-2"))
            second.power(kept, PowerAction.START)
            assert vnc_login("127.0.0.1", port, VNC_PASSWORD)[2] == 0
        finally:
            local_host.stop_all(first)

    def test_a_failed_start_leaves_nothing(self, state: Path) -> None:
        driver = open_local(state, session_command=["/no/such/program"])
        with pytest.raises(CenterError, match="cannot start /no/such/program"):
            driver.create(_request("broken"))
        assert driver.inventory() == []
        assert sorted(p.name for p in state.iterdir()) == [".lock"]

    def test_a_state_dir_anyone_may_write_is_refused_and_left_alone(self, state: Path) -> None:
        state.mkdir(mode=0o777)
        state.chmod(0o777)
        driver = open_local(state)
        with pytest.raises(CenterError, match="writable by no one else"):
            driver.create(_request("shared"))
        assert state.stat().st_mode & 0o777 == 0o777 and list(state.iterdir()) == []

    def test_no_desktop_without_a_vnc_password(self, state: Path) -> None:
        driver = open_driver("local", center_params(state), {})
        with pytest.raises(CenterError, match="no secret vnc_password"):
            driver.create(_request("open"))
        assert driver.inventory() == []

    def test_a_desktop_of_another_broker_is_not_deleted(self, driver: CenterDriver) -> None:
        assert isinstance(driver, LocalCenter)
        machine_id = driver.create(_request("vdi-theirs"))
        other = open_driver(
            "local",
            {**driver.local_params.model_dump(), "broker_tag": "another"},
            {"vnc_password": VNC_PASSWORD},
        )
        machine = _running(driver, machine_id)
        with pytest.raises(CenterError, match="not built by this broker"):
            other.terminate(machine)
        assert other.find_tagged("deskbroker-task-vdi-theirs") == []
        assert other.leaked(set(), center_id="center-1") == []


def test_params_are_checked_and_all_host_side(tmp_path: Path) -> None:
    params = LocalParams.model_validate({"state_dir": str(tmp_path)})
    assert host_side_of(params) == ["session_command", "state_dir"]
    for bad in (
        {"state_dir": "relative/dir"},
        {"state_dir": "/var/../etc"},
        {"state_dir": "/x", "address": "localhost"},
        {"state_dir": "/x", "address": "0.0.0.0"},
        {"state_dir": "/x", "first_port": 65530, "max_desktops": 20},
        {"state_dir": "/x", "session_command": []},
        {"state_dir": "/x", "session_user": "Robert'); DROP"},
        {"state_dir": "/x", "depth": 8},
    ):
        with pytest.raises(ValidationError):
            LocalParams.model_validate(bad)


def test_sessions_never_run_as_root_nor_as_a_user_the_broker_cannot_become(
    tmp_path: Path,
) -> None:
    if os.geteuid() == 0:
        refusals = ((None, "set the local center's session_user"), ("root", "not be root"))
    else:  # a broker that is not root cannot switch to anyone
        refusals = (("daemon", "cannot run sessions as daemon"),)
    for user, words in refusals:
        driver = open_local(tmp_path, session_user=user)
        with pytest.raises(CenterError, match=words):
            driver.create(_request("as-root"))


def test_a_new_broker_process_finds_and_stops_the_sessions_of_the_last(state: Path) -> None:
    """The sessions outlive the broker process that started them (they are not its
    children any more): the next one reads their state, sees them run, stops them."""
    params = center_params(state)
    script = (
        "import json, sys\n"
        "from deskbroker.centers.registry import drivers, open_driver\n"
        "from deskbroker.centers.base import ProvisionRequest\n"
        "d = open_driver('local', json.loads(sys.argv[1]), {'vnc_password': sys.argv[2]})\n"
        "print(d.create(ProvisionRequest(name='from-before', tags=('t-1',))))\n"
    )
    made = subprocess.run(
        [sys.executable, "-c", script, json.dumps(params), VNC_PASSWORD],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    machine_id = made.stdout.strip()
    driver = open_driver("local", params, {"vnc_password": VNC_PASSWORD})
    try:
        machine = _running(driver, machine_id)
        assert [m.external_id for m in driver.find_tagged("t-1")] == [machine_id]
        assert vnc_login("127.0.0.1", machine.attributes["ports"]["vnc"], VNC_PASSWORD)[2] == 0
        driver.power(machine, PowerAction.STOP)
        stopped = driver.machine(machine_id)
        assert stopped is not None and stopped.power_state is PowerState.STOPPED
    finally:
        assert isinstance(driver, LocalCenter)
        local_host.stop_all(driver)
    assert driver.inventory() == []


def _as_non_root(params: dict[str, object]) -> list[object]:
    """The driver in a process that is not root: a fork of this one that drops to
    ``nobody`` when the tests run as root. A fork, not a new interpreter, because the
    checkout (and its venv) may sit in a folder only root can read, as a CI's private
    clone does: everything the child runs is imported before it drops its rights."""
    # The drivers' entry points are read from the installed metadata on first use.
    assert "local" in drivers()
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.close(reader)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            os.environ["HOME"] = "/tmp"
            base = tempfile.mkdtemp()
            mine = {**params, "state_dir": base + "/state", "session_user": None}
            driver = open_driver("local", mine, {"vnc_password": VNC_PASSWORD})
            made = driver.machine(driver.create(ProvisionRequest(name="mine")))
            assert made is not None
            state = json.loads(Path(f"{base}/state/{made.external_id}.json").read_text())
            uid = os.stat(f"/proc/{state['session'][0]}").st_uid
            port = made.attributes["ports"]["vnc"]
            login = vnc_login("127.0.0.1", port, VNC_PASSWORD)[2]
            driver.terminate(made)
            other = open_driver(
                "local", {**mine, "session_user": "daemon"}, {"vnc_password": VNC_PASSWORD}
            )
            try:
                other.create(ProvisionRequest(name="theirs"))
                refused = ""
            except Exception as exc:
                refused = str(exc)
            left = driver.inventory()
            shutil.rmtree(base)
            answer = [made.power_state.value, uid, login, left, refused]
            os.write(writer, json.dumps(answer).encode())
            code = 0
        except BaseException as exc:
            os.write(writer, json.dumps(["error", repr(exc)]).encode())
        finally:
            os._exit(code)
    os.close(writer)
    chunks = []
    while chunk := os.read(reader, 65536):
        chunks.append(chunk)
    os.close(reader)
    _, status = os.waitpid(child, 0)
    answer = json.loads(b"".join(chunks) or b"[]")
    assert os.waitstatus_to_exitcode(status) == 0, answer
    return list(answer)


def test_a_broker_that_is_not_root_runs_sessions_as_itself() -> None:
    """The same driver in a broker process that is not root (``nobody`` when the tests
    run as root): sessions run as that user without any switch, and asking for another
    user is refused in words."""
    power, uid, login, left, refused = _as_non_root(center_params(Path("/unused")))
    assert (power, uid, login, left) == ("running", os.geteuid() or 65534, 0, [])
    assert "cannot run sessions as daemon" in str(refused)

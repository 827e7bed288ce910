"""The local center: Xvnc sessions on the broker's own host.

A desktop is a slot of the center (slot ``k``: X display ``first_display + k``, VNC port
``first_port + k`` on ``address``) with a small JSON state file in ``state_dir``: its
name, its slot, the broker's marks (tag, center, pool, desktop, the build's task tag)
and the pid and start time of its Xvnc and of its session. Power start runs the Xvnc and
the configured session command in it; stop ends both and keeps the definition, so start
brings it back on the same display and port; delete removes the state file. The
inventory, a resumed build and the leak sweep read the state files.

Both processes run as the session user (the broker drops root for them) with a clean
environment, and Xvnc asks for the VNC password: a per-desktop password file made with
``vncpasswd -f`` from the center secret ``vnc_password``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from deskbroker import xvnc
from deskbroker.centers.base import (
    CENTER_KEY,
    DESKTOP_KEY,
    BuildLimits,
    Capability,
    CenterDriver,
    MachineInfo,
    PowerAction,
    ProvisionRequest,
    QuotaExceeded,
)
from deskbroker.centers.local import processes
from deskbroker.centers.local.params import NAME, LocalParams, LocalProvisionParams
from deskbroker.centers.local.processes import RunAs
from deskbroker.domain.states import PowerState
from deskbroker.errors import CenterError, DeskbrokerError

_ID = re.compile(r"^[0-9a-f]{32}$")
# X servers claim a display through these files (the same as deskbroker.xvnc's).
_X_LOCK = "/tmp/.X{}-lock"  # noqa: S108
_X_SOCKET = "/tmp/.X11-unix/X{}"  # noqa: S108
log = logging.getLogger(__name__)

State = dict[str, Any]


class LocalCenter(CenterDriver):
    """The broker's own host: its desktops are Xvnc sessions the broker starts."""

    kind: ClassVar[str] = "local"
    Params: ClassVar[type[BaseModel]] = LocalParams
    ProvisionParams: ClassVar[type[BaseModel] | None] = LocalProvisionParams
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.INVENTORY,
            Capability.PROVISION,
            Capability.POWER,
            Capability.TERMINATE,
            Capability.LEAK_SWEEP,
            Capability.PROBE,
        }
    )

    def __init__(self, params: Mapping[str, Any], secrets: Mapping[str, str]) -> None:
        super().__init__(params, secrets)
        assert isinstance(self.params, LocalParams)
        self.local_params: LocalParams = self.params
        self.state_dir = Path(self.local_params.state_dir)

    def limits(self) -> BuildLimits:
        return BuildLimits(
            max_in_flight=self.local_params.max_in_flight,
            build_timeout_s=self.local_params.build_timeout_s,
        )

    # --- state files ------------------------------------------------------------------
    def _ready_dir(self) -> Path:
        """The state directory: made 0711 if missing (a session user reaches its own
        password file by name but lists nothing). One that exists is used as it is, and
        only if it is the broker's own and writable by no one else: a misnamed system
        directory is refused, never re-moded."""
        try:
            self.state_dir.mkdir(parents=True, mode=0o711)
            self.state_dir.chmod(0o711)  # whatever the umask took away
        except FileExistsError:
            found = self.state_dir.stat()
            if not self.state_dir.is_dir():
                raise CenterError(f"state_dir {self.state_dir} is not a directory") from None
            if found.st_uid != os.geteuid() or found.st_mode & 0o022:
                raise CenterError(
                    f"state_dir {self.state_dir} must belong to the broker's user and be "
                    "writable by no one else: use a directory of its own"
                ) from None
        except OSError as exc:
            raise CenterError(f"state_dir {self.state_dir} is not usable: {exc}") from exc
        return self.state_dir

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One change at a time to this state directory, across threads and brokers
        (``flock`` holds per open file, so two threads exclude each other too)."""
        with (self._ready_dir() / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _path(self, desktop: str, suffix: str) -> Path:
        return self.state_dir / f"{desktop}{suffix}"

    def _load(self, desktop: str) -> State | None:
        if not _ID.match(desktop):
            return None  # not one of ours, and never a path
        try:
            found: State = json.loads(self._path(desktop, ".json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CenterError(f"the state of local desktop {desktop} is unreadable: {exc}") from exc
        return found

    def _all(self) -> list[State]:
        if not self.state_dir.is_dir():
            return []
        found = []
        for path in sorted(self.state_dir.glob("*.json")):
            if not _ID.match(path.stem):
                continue
            try:
                found.append(json.loads(path.read_text()))
            except FileNotFoundError:
                continue  # deleted while listed
            except (OSError, ValueError) as exc:
                log.warning("skipping unreadable local desktop state %s: %s", path, exc)
        return found

    def _save(self, state: State) -> None:
        path = self._path(state["id"], ".json")
        partial = path.with_suffix(".json.new")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(state, out, sort_keys=True)
        os.replace(partial, path)

    # --- reading ----------------------------------------------------------------------
    def _power(self, state: State) -> tuple[PowerState, str]:
        pid, start = state.get("xvnc") or (0, 0)
        found = processes.state(pid, start)
        if found == "running":
            return PowerState.RUNNING, ""
        if found == "paused":
            return PowerState.SUSPENDED, ""
        if state.get("wanted") == "building":
            return PowerState.BUILDING, ""
        if state.get("wanted") == "running":
            return PowerState.ERROR, f"Xvnc ended on its own: {self._log_tail(state['id'])}"
        return PowerState.STOPPED, ""

    def _log_tail(self, desktop: str) -> str:
        try:
            lines = self._path(desktop, ".log").read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        return " | ".join(line.strip() for line in lines[-3:] if line.strip()) or "no output"

    def _describe(self, state: State) -> MachineInfo:
        power, fault = self._power(state)
        metadata: dict[str, str] = dict(state.get("metadata") or {})
        session_pid, session_start = state.get("session") or (0, 0)
        attributes: dict[str, Any] = {
            "display": state["display"],
            "ports": {"vnc": state["port"]},
            "geometry": state["geometry"],
            "user": state.get("user", ""),
            "session": processes.state(session_pid, session_start),
            "tags": ",".join(state.get("tags") or []),
            **{f"meta.{k}": v for k, v in metadata.items()},
        }
        if fault:
            attributes["fault"] = fault
        return MachineInfo(
            external_id=state["id"],
            name=state["name"],
            address=self.local_params.address,
            hostname=socket.gethostname(),
            os="Linux",
            power_state=power,
            attributes=attributes,
            driver_state={"display": state["display"], "port": state["port"]},
            fault=fault,
            desktop_id=metadata.get(DESKTOP_KEY, ""),
        )

    def _ours(self, state: State) -> bool:
        return state.get("broker") == self.local_params.broker_tag

    def inventory(self) -> list[MachineInfo]:
        return [self._describe(s) for s in self._all()]

    def machine(self, external_id: str) -> MachineInfo | None:
        state = self._load(external_id)
        return self._describe(state) if state is not None else None

    # --- building ---------------------------------------------------------------------
    def create(self, request: ProvisionRequest) -> str:
        wanted = self.provision_params(request)
        assert isinstance(wanted, LocalProvisionParams)
        if not re.fullmatch(NAME, request.name):
            raise CenterError(
                f"{request.name!r} is not a usable local desktop name: letters, digits and "
                "_ . + : - only, starting with a letter or digit, at most 100 characters"
            )
        params = self.local_params
        who = processes.run_as(params.session_user)
        self._password()  # no desktop without VNC auth: refuse before making anything
        state: State = {
            "id": uuid.uuid4().hex,
            "name": request.name,
            "broker": params.broker_tag,
            "geometry": wanted.geometry or params.geometry,
            # The engine's marks, never secrets (the agent's enrolment secret stays out).
            "metadata": {k: v for k, v in request.metadata.items() if "enrol" not in k},
            "tags": list(request.tags),
            # Until its Xvnc listens, a scan sees a build, not a desktop that crashed.
            "wanted": "building",
        }
        with self._locked():
            if not processes.reachable(self._path(state["id"], ".passwd"), who):
                raise CenterError(
                    f"session_user {who.name} cannot reach {self.state_dir}: every "
                    "directory above it must be searchable (x) by that user"
                )
            held = self._all()
            # Desktops keep the display and port they were built with, even after the
            # center's range changes: a new one takes neither, stopped or not.
            used = {("display", s["display"]) for s in held} | {("port", s["port"]) for s in held}
            slots = range(params.max_desktops) if len(held) < params.max_desktops else range(0)
            slot = next((k for k in slots if self._free(k, used)), None)
            if slot is None:
                raise QuotaExceeded(
                    f"the local center's {params.max_desktops} slots are all in use (or "
                    "their displays and ports are taken by other programs)"
                )
            state.update(
                slot=slot, display=params.first_display + slot, port=params.first_port + slot
            )
            self._save(state)
            try:
                self._launch(state, who)
            except BaseException:
                # Nothing half-made stays: no state, no password file, no process.
                self._remove(state)
                raise
        return str(state["id"])

    def _free(self, slot: int, used: set[tuple[str, int]]) -> bool:
        """A slot whose display and port no desktop holds and no other program has."""
        display = self.local_params.first_display + slot
        port = self.local_params.first_port + slot
        if ("display", display) in used or ("port", port) in used:
            return False
        return not _display_taken(display) and _port_free(self.local_params.address, port)

    def _password(self) -> str:
        password = self.secrets.get("vnc_password", "")
        if not password:
            raise CenterError(
                "the local center has no secret vnc_password: its desktops listen on the "
                "network and are never started without VNC authentication"
            )
        return password

    def _launch(self, state: State, who: RunAs) -> None:
        """Start the desktop's Xvnc, wait for it to listen, then its session; records
        both in the state file. Runs under the lock."""
        params = self.local_params
        display, port, desktop = state["display"], state["port"], state["id"]
        if _display_taken(display) or not _port_free(params.address, port):
            raise CenterError(
                f"display :{display} or port {params.address}:{port} of local desktop "
                f"{state['name']} is taken by another program"
            )
        binary = _which("Xvnc", "tigervnc-standalone-server")
        # A fresh password file from the current secret at every start (a rotated
        # secret applies from the next start), readable only by the session user.
        password_file = self._path(desktop, ".passwd")
        password_file.unlink(missing_ok=True)
        # Made 0600 before vncpasswd's output is written into it: never readable by others.
        os.close(os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            xvnc.write_password_file(password_file, self._password())
        except (DeskbrokerError, subprocess.CalledProcessError, OSError) as exc:
            password_file.unlink(missing_ok=True)
            raise CenterError(f"cannot write the VNC password file: {exc}") from exc
        if who.switch:
            os.chown(password_file, who.uid, who.gid)
        password_file.chmod(0o400)
        log_file = self._path(desktop, ".log")
        log_file.unlink(missing_ok=True)
        pid, start = processes.spawn(
            [
                binary,
                f":{display}",
                "-rfbport",
                str(port),
                "-interface",
                params.address,
                "-geometry",
                state["geometry"],
                "-depth",
                str(params.depth),
                "-desktop",
                state["name"],
                "-nolisten",
                "tcp",
                "-SecurityTypes",
                "VncAuth",
                "-PasswordFile",
                str(password_file),
            ],
            who,
            None,
            log_file,
        )
        state.update(xvnc=[pid, start], session=[0, 0], user=who.name)
        self._save(state)
        try:
            xvnc.wait_for_port(params.address, port, params.start_timeout_s)
        except TimeoutError:
            processes.stop(pid, start, group=False)
            raise CenterError(
                f"Xvnc of local desktop {state['name']} did not listen on "
                f"{params.address}:{port}: {self._log_tail(desktop)}"
            ) from None
        if processes.state(pid, start) == "gone":
            # Something else answered on the port and our server gave up.
            raise CenterError(
                f"Xvnc of local desktop {state['name']} ended at start: {self._log_tail(desktop)}"
            )
        try:
            session = processes.spawn(list(params.session_command), who, display, log_file)
        except CenterError:
            processes.stop(pid, start, group=False)  # no display without its session
            raise
        state.update(session=list(session), wanted="running")
        self._save(state)

    # --- power ------------------------------------------------------------------------
    def power(self, machine: MachineInfo, action: PowerAction) -> None:
        """Start or stop a desktop's processes (reboot: both), or pause them with
        SIGSTOP (suspend) and SIGCONT (resume). Stop waits for Xvnc to end, so its
        display and port are free for the next start."""
        with self._locked():
            state = self._load(machine.external_id)
            if state is None:
                raise CenterError(f"local desktop {machine.name} is gone")
            power, _ = self._power(state)
            if action in (PowerAction.START, PowerAction.RESUME):
                if power is PowerState.SUSPENDED:
                    self._signal(state, signal.SIGCONT)
                elif power is not PowerState.RUNNING:
                    if action is PowerAction.RESUME:
                        raise CenterError(f"local desktop {machine.name} is off: start it")
                    self._kill(state)  # a session left behind by a crashed Xvnc
                    self._launch(state, processes.run_as(self.local_params.session_user))
            elif action is PowerAction.STOP:
                self._kill(state)
                state.update(wanted="stopped")
                self._save(state)
            elif action is PowerAction.SUSPEND:
                if power is not PowerState.RUNNING and power is not PowerState.SUSPENDED:
                    raise CenterError(f"local desktop {machine.name} is off: nothing to suspend")
                self._signal(state, signal.SIGSTOP)
            elif action in (PowerAction.REBOOT, PowerAction.REBOOT_HARD):
                self._kill(state)
                self._launch(state, processes.run_as(self.local_params.session_user))

    def _signal(self, state: State, signum: int) -> None:
        session_pid, session_start = state.get("session") or (0, 0)
        xvnc_pid, xvnc_start = state.get("xvnc") or (0, 0)
        processes.signal_group(session_pid, session_start, signum)
        processes.signal_one(xvnc_pid, xvnc_start, signum)

    def _kill(self, state: State) -> None:
        """End the session's processes, then the Xvnc (its X clients end with it)."""
        session_pid, session_start = state.get("session") or (0, 0)
        xvnc_pid, xvnc_start = state.get("xvnc") or (0, 0)
        processes.stop(session_pid, session_start, group=True)
        # Xvnc's group too: at start it forks ``sh -c xkbcomp``, which inherits its
        # listening socket and X socket. An Xvnc killed meanwhile leaves that helper
        # holding the VNC port for a while, and the next start found it "taken".
        processes.stop(xvnc_pid, xvnc_start, group=True)
        self._path(state["id"], ".passwd").unlink(missing_ok=True)

    # --- destroying -------------------------------------------------------------------
    def terminate(self, machine: MachineInfo) -> None:
        """End a desktop's processes and remove its files; one already gone is no
        error. A state file without this broker's tag is never touched."""
        with self._locked():
            state = self._load(machine.external_id)
            if state is None:
                return
            if not self._ours(state):
                raise CenterError(
                    f"local desktop {machine.name} was not built by this broker: not deleted"
                )
            self._remove(state)

    def _remove(self, state: State) -> None:
        self._kill(state)
        for suffix in (".log", ".json"):
            self._path(state["id"], suffix).unlink(missing_ok=True)

    def find_tagged(self, tag: str) -> list[MachineInfo]:
        return [
            self._describe(s) for s in self._all() if self._ours(s) and tag in (s.get("tags") or [])
        ]

    def leaked(self, known_external_ids: set[str], *, center_id: str) -> list[MachineInfo]:
        return [
            self._describe(s)
            for s in self._all()
            if self._ours(s)
            and (s.get("metadata") or {}).get(CENTER_KEY) == center_id
            and s["id"] not in known_external_ids
        ]


def _display_taken(display: int) -> bool:
    """Whether a live X server holds ``display``. The lock of one that was killed (its
    pid gone) is removed with its socket, as X servers themselves do at start."""
    lock = Path(_X_LOCK.format(display))
    try:
        pid = int(lock.read_text().strip() or "0")
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True  # unreadable: not ours to judge
    if pid > 0 and processes.alive(pid):
        return True
    for stale in (lock, Path(_X_SOCKET.format(display))):
        stale.unlink(missing_ok=True)
    return False


def _port_free(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def _which(binary: str, package: str) -> str:
    found = shutil.which(binary)
    if found is None:
        raise CenterError(f"{binary} is not installed on the broker host: install {package}")
    return found

"""Real desktops behind instances: one Xvnc per ACTIVE server on the server's own address."""

from __future__ import annotations

import atexit
import logging
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

# Displays are process-wide: two simulators in one test run must not pick the same one.
_DISPLAYS_LOCK = threading.Lock()
_DISPLAYS_TAKEN: set[int] = set()
# Desktops of simulators that were never stopped die with the interpreter.
_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_LIVE):
        if process.poll() is None:
            process.kill()


# X servers keep their lock files and sockets here whatever TMPDIR says.
_X11_TMP = Path("/tmp")  # noqa: S108


def _display_free(number: int) -> bool:
    return not (
        (_X11_TMP / f".X{number}-lock").exists() or (_X11_TMP / ".X11-unix" / f"X{number}").exists()
    )


def take_display(base: int) -> int:
    """Reserve an X display number ≥ base that no X server here uses."""
    with _DISPLAYS_LOCK:
        number = base
        while number in _DISPLAYS_TAKEN or not _display_free(number):
            number += 1
        _DISPLAYS_TAKEN.add(number)
        return number


def release_display(number: int) -> None:
    """Give a display number back."""
    with _DISPLAYS_LOCK:
        _DISPLAYS_TAKEN.discard(number)


@dataclass(slots=True)
class _Job:
    op: str
    server_id: str = ""
    address: str = ""
    name: str = ""
    done: threading.Event | None = None


@dataclass(slots=True)
class Desktop:
    """A running Xvnc."""

    server_id: str
    address: str
    port: int
    display: int
    process: subprocess.Popen[bytes]
    log_file: IO[bytes]

    def as_dict(self) -> dict[str, object]:
        """Plain-dict view for the control API."""
        return {
            "server_id": self.server_id,
            "address": self.address,
            "port": self.port,
            "display": self.display,
            "pid": self.process.pid,
            "running": self.process.poll() is None,
        }


class XvncBacking:
    """Starts ``Xvnc :N -rfbport PORT -interface ADDRESS`` when a server becomes ACTIVE and
    stops it when the server shuts off, suspends, reboots, fails or is deleted.

    Work is done in order on one worker thread so that lifecycle changes made under the
    state lock never wait for a process.
    """

    def __init__(
        self,
        *,
        port: int = 5900,
        password: str | None = None,
        display_base: int = 100,
        geometry: str = "1024x768",
        depth: int = 24,
        binary: str = "Xvnc",
    ) -> None:
        path = shutil.which(binary)
        if path is None:
            raise RuntimeError(f"{binary} not found: install tigervnc-standalone-server")
        self.binary = path
        self.port = port
        self.password = password
        self.display_base = display_base
        self.geometry = geometry
        self.depth = depth
        self.workdir = Path(tempfile.mkdtemp(prefix="cloudsim-xvnc-"))
        self._password_file: Path | None = None
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._desktops: dict[str, Desktop] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="cloudsim-xvnc", daemon=True)
        self._thread.start()

    # -- Backing protocol ---------------------------------------------------------------
    def server_up(self, server_id: str, address: str, name: str) -> None:
        """Queue the start of a desktop for the server."""
        self._queue.put(_Job("up", server_id, address, name))

    def server_down(self, server_id: str) -> None:
        """Queue the stop of the server's desktop."""
        self._queue.put(_Job("down", server_id))

    # -- inspection ---------------------------------------------------------------------
    def desktops(self) -> list[dict[str, object]]:
        """The running desktops."""
        with self._lock:
            return [d.as_dict() for d in self._desktops.values()]

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every queued start/stop has been carried out."""
        done = threading.Event()
        self._queue.put(_Job("mark", done=done))
        return done.wait(timeout)

    # -- worker ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if item.op == "up":
                    self._start(item.server_id, item.address, item.name)
                elif item.op == "down":
                    self._stop(item.server_id)
                elif item.done is not None:
                    item.done.set()
            except Exception:  # keep serving other servers whatever one failure was
                log.exception("xvnc %s of %s failed", item.op, item.server_id)

    def _password_path(self) -> Path:
        if self._password_file is None:
            vncpasswd = shutil.which("vncpasswd")
            if vncpasswd is None:
                raise RuntimeError("vncpasswd not found: install tigervnc-tools")
            assert self.password is not None
            obfuscated = subprocess.run(
                [vncpasswd, "-f"], input=self.password.encode(), capture_output=True, check=True
            ).stdout
            path = self.workdir / "passwd"
            path.write_bytes(obfuscated)
            path.chmod(0o600)
            self._password_file = path
        return self._password_file

    def _start(self, server_id: str, address: str, name: str) -> None:
        with self._lock:
            current = self._desktops.get(server_id)
        if current is not None:
            if current.process.poll() is None and current.address == address:
                return
            self._stop(server_id)
        security = ["-SecurityTypes", "None"]
        if self.password:
            security = ["-SecurityTypes", "VncAuth", "-PasswordFile", str(self._password_path())]
        # Another X server may grab a display between our check and Xvnc's: try the next.
        for _attempt in range(5):
            display = take_display(self.display_base)
            cmd = [
                self.binary, f":{display}", "-rfbport", str(self.port), "-interface", address,
                *security, "-geometry", self.geometry, "-depth", str(self.depth),
                "-desktop", f"cloudsim {name}", "-nolisten", "tcp", "-AlwaysShared",
            ]  # fmt: skip
            log_file = (self.workdir / f"xvnc-{display}.log").open("ab")
            # Same process group as the simulator: a Ctrl-C of the test run reaches Xvnc too.
            process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )
            _LIVE.add(process)
            with self._lock:
                self._desktops[server_id] = Desktop(
                    server_id, address, self.port, display, process, log_file
                )
            if self._listening(address, process):
                return
            self._stop(server_id)
        log.error("xvnc for %s on %s did not start; see %s", server_id, address, self.workdir)

    def _listening(self, address: str, process: subprocess.Popen[bytes]) -> bool:
        """Wait until the desktop accepts connections (False if Xvnc exited)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                socket.create_connection((address, self.port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.01)
        return process.poll() is None

    def _stop(self, server_id: str) -> None:
        with self._lock:
            desktop = self._desktops.pop(server_id, None)
        if desktop is None:
            return
        process = desktop.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=3)
        _LIVE.discard(process)
        desktop.log_file.close()
        release_display(desktop.display)

    def close(self) -> None:
        """Stop every desktop and the worker; remove the work directory."""
        self._queue.put(None)
        self._thread.join(timeout=10)
        with self._lock:
            ids = list(self._desktops)
        for server_id in ids:
            self._stop(server_id)
        shutil.rmtree(self.workdir, ignore_errors=True)

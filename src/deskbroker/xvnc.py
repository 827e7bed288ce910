"""Real Xvnc desktops on loopback addresses, for the demo and the end-to-end tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from deskbroker.errors import DeskbrokerError


class XvncUnavailable(DeskbrokerError):
    status = 503
    title = "Xvnc is not installed"


@dataclass
class XvncDesktop:
    """One running Xvnc server listening on ``address:port``."""

    display: int
    address: str
    port: int
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# X servers claim a display number through these well-known files.
X_SOCKETS = Path("/tmp/.X11-unix")  # noqa: S108
X_LOCKS = Path("/tmp")  # noqa: S108


def _free_display(start: int) -> int:
    display = start
    while (X_SOCKETS / f"X{display}").exists() or (X_LOCKS / f".X{display}-lock").exists():
        display += 1
    return display


def write_password_file(path: Path, password: str) -> Path:
    """A VncAuth password file made by TigerVNC's own ``vncpasswd -f``."""
    tool = shutil.which("vncpasswd") or shutil.which("tigervncpasswd")
    if tool is None:
        raise XvncUnavailable("vncpasswd is missing: install tigervnc-tools (make setup does)")
    result = subprocess.run([tool, "-f"], input=password.encode(), capture_output=True, check=True)
    path.write_bytes(result.stdout)
    path.chmod(0o600)
    return path


#: Display numbers ``start`` tries when its Xvnc exits at once (the display was taken).
DISPLAY_ATTEMPTS = 10


class _ExitedEarly(Exception):
    """The server process ended before its port answered."""


def wait_for_port(
    address: str,
    port: int,
    timeout_s: float = 10.0,
    *,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Wait until ``address:port`` accepts a connection; with ``process``, stop waiting as
    soon as that server has exited (``_ExitedEarly``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            if process is not None and process.poll() is not None:
                raise _ExitedEarly from None
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {address}:{port} after {timeout_s} s")


def start(
    address: str,
    *,
    port: int = 5900,
    password_file: Path | None = None,
    geometry: str = "1024x768",
    first_display: int = 40,
) -> XvncDesktop:
    """Start Xvnc bound to one loopback address; VncAuth when a password file is given."""
    binary = shutil.which("Xvnc")
    if binary is None:
        raise XvncUnavailable("Xvnc is missing: install tigervnc-standalone-server")
    security = (
        ["-SecurityTypes", "VncAuth", "-PasswordFile", str(password_file)]
        if password_file
        else ["-SecurityTypes", "None"]
    )
    display = first_display
    # Another process (a parallel test worker, a second run) may claim the display we found
    # free before our Xvnc does: ours then exits at once, and we try the next number.
    for _ in range(DISPLAY_ATTEMPTS):
        display = _free_display(display)
        process = subprocess.Popen(
            [
                binary,
                f":{display}",
                "-rfbport",
                str(port),
                "-interface",
                address,
                "-geometry",
                geometry,
                "-depth",
                "24",
                "-nolisten",
                "tcp",
                *security,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        desktop = XvncDesktop(display, address, port, process)
        try:
            wait_for_port(address, port, process=process)
        except TimeoutError:
            desktop.stop()
            raise
        except _ExitedEarly:
            display += 1
            continue
        time.sleep(0.05)
        if process.poll() is not None:
            # Something else answered on the port and our server gave up.
            raise XvncUnavailable(f"{address}:{port} is already taken by another server")
        return desktop
    raise XvncUnavailable(
        f"Xvnc on {address}:{port} exited at once on {DISPLAY_ATTEMPTS} display numbers "
        f"from :{first_display} (is the port taken, or every display?)"
    )


def read_banner(address: str, port: int, timeout_s: float = 5.0) -> str:
    """The RFB protocol banner a VNC server sends first, e.g. ``RFB 003.008``."""
    with socket.create_connection((address, port), timeout=timeout_s) as conn:
        data = b""
        while not data.endswith(b"\n") and len(data) < 12:
            chunk = conn.recv(12 - len(data))
            if not chunk:
                break
            data += chunk
    return data.decode("ascii", "replace").strip()

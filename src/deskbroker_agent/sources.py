"""Event sources: each reports the sessions it sees now, the tracker turns changes into events.

A source answers ``sessions()`` with a snapshot (or ``None`` when it cannot look this
round, which keeps the last snapshot: a failing probe must not log everybody out).
Snapshots rather than callbacks make every source restartable and testable the same way,
whatever it reads: systemd-logind, utmp, an Xvnc server's connection log, the X idle time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import logging
import os
import pwd
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger("deskbroker_agent.sources")


@dataclass(frozen=True)
class Seen:
    """One session as a source sees it at this moment."""

    key: str
    user: str
    connected: bool = True
    locked: bool = False
    # Seconds without keyboard or mouse input; None when the source cannot tell.
    idle_s: float | None = None
    client_address: str = ""
    protocol: str = ""


class EventSource(Protocol):
    """What the agent asks every source."""

    name: str

    def sessions(self) -> list[Seen] | None:
        """The sessions open now, or None when the source could not look."""


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return ""


# --- X idle time ----------------------------------------------------------------------
class _XssInfo(ctypes.Structure):
    _fields_ = [
        ("window", ctypes.c_ulong),
        ("state", ctypes.c_int),
        ("kind", ctypes.c_int),
        ("til_or_since", ctypes.c_ulong),
        ("idle", ctypes.c_ulong),
        ("event_mask", ctypes.c_ulong),
    ]


class XIdle:
    """The X server's idle time through the MIT-SCREEN-SAVER extension (libXss)."""

    def __init__(self, display: str) -> None:
        self.display = display
        self._x: ctypes.CDLL | None = None
        self._xss: ctypes.CDLL | None = None
        self._dpy: int | None = None
        self._info: ctypes._Pointer[_XssInfo] | None = None
        x11, xss = ctypes.util.find_library("X11"), ctypes.util.find_library("Xss")
        if not x11 or not xss:
            log.warning("libX11/libXss not found (Debian: libxss1): no X idle time")
            return
        self._x, self._xss = ctypes.CDLL(x11), ctypes.CDLL(xss)
        self._x.XOpenDisplay.restype = ctypes.c_void_p
        self._x.XOpenDisplay.argtypes = [ctypes.c_char_p]
        self._x.XDefaultRootWindow.restype = ctypes.c_ulong
        self._x.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
        self._x.XCloseDisplay.argtypes = [ctypes.c_void_p]
        self._xss.XScreenSaverAllocInfo.restype = ctypes.POINTER(_XssInfo)
        self._xss.XScreenSaverQueryInfo.argtypes = [
            ctypes.c_void_p,
            ctypes.c_ulong,
            ctypes.POINTER(_XssInfo),
        ]

    def idle_s(self) -> float | None:
        """Seconds since the last input on the display; None when it cannot be read."""
        if self._x is None or self._xss is None:
            return None
        if self._dpy is None:
            dpy = self._x.XOpenDisplay(self.display.encode())
            if not dpy:
                return None
            self._dpy = dpy
            self._info = self._xss.XScreenSaverAllocInfo()
        root = self._x.XDefaultRootWindow(self._dpy)
        if not self._xss.XScreenSaverQueryInfo(self._dpy, root, self._info):
            return None
        assert self._info is not None
        return float(self._info.contents.idle) / 1000.0

    def close(self) -> None:
        if self._x is not None and self._dpy is not None:
            self._x.XCloseDisplay(self._dpy)
        self._dpy = None


# --- Xvnc viewers -----------------------------------------------------------------------
class XvncSource:
    """The session of an Xvnc desktop: its viewers from the server's connection log, its
    idle time from the X server.

    The session begins with the first viewer (a login), ends when the X server goes away
    or the broker asks for a log-off, and is disconnected while no viewer is attached.
    """

    name = "xvnc"

    def __init__(self, display: str, log_path: str, user: Callable[[], str]) -> None:
        self.display = display if display.startswith(":") else f":{display}"
        self.log_path = Path(log_path)
        self.user = user
        self.idle = XIdle(self.display)
        self.viewers: dict[str, str] = {}  # "address::port" -> address
        self._offset = 0
        self._partial = b""
        self._open = False
        self._user = ""
        self._owner = ""
        self.generation = 0

    @property
    def key(self) -> str:
        return f"x{self.display.lstrip(':')}-{self.generation}"

    def _socket(self) -> Path:
        return Path("/tmp/.X11-unix") / f"X{self.display.lstrip(':').split('.')[0]}"  # noqa: S108

    def _read_log(self) -> None:
        try:
            with self.log_path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self._offset:  # rotated or truncated: read it from the start
                    self._offset, self._partial = 0, b""
                f.seek(self._offset)
                chunk = f.read()
                self._offset = f.tell()
        except FileNotFoundError:
            return
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("Connections: accepted: "):
                peer = line.split(": ", 2)[2].split()[0]
                self.viewers[peer] = _address(peer.rsplit("::", 1)[0])
            elif line.startswith("Connections: closed: "):
                peer = line.split(": ", 2)[2].split()[0]
                self.viewers.pop(peer, None)

    def _x_owner(self) -> str:
        if not self._owner:
            try:
                self._owner = pwd.getpwuid(self._socket().stat().st_uid).pw_name
            except (OSError, KeyError):
                self._owner = "root"
        return self._owner

    def end_session(self) -> None:
        """Forget the current session (the broker logged it off): a new viewer starts a
        new one."""
        self._open = False
        self._user = ""
        self.viewers.clear()
        self.generation += 1

    def sessions(self) -> list[Seen] | None:
        self._read_log()
        if not self._socket().exists():
            self.viewers.clear()
            if self._open:
                self.end_session()
            return []
        if not self._open:
            if not self.viewers:
                return []
            self._open = True
            # Whose session it is, asked once when it begins (the broker may be asked).
            self._user = self.user() or self._x_owner()
        address = next(iter(self.viewers.values()), "")
        return [
            Seen(
                key=self.key,
                user=self._user,
                connected=bool(self.viewers),
                idle_s=self.idle.idle_s(),
                client_address=address,
                protocol="vnc",
            )
        ]

    def disconnect_viewers(self) -> bool:
        """Ask Xvnc to drop every viewer (TigerVNC's ``vncconfig -disconnect``)."""
        tool = shutil.which("vncconfig")
        if tool is None:
            return False
        done = subprocess.run(
            [tool, "-display", self.display, "-disconnect"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return done.returncode == 0


# --- utmp ---------------------------------------------------------------------------------
# struct utmp on Linux (glibc, 64-bit and 32-bit alike): 384 bytes.
_UTMP = struct.Struct("<hxxi32s4s32s256shhiii16s20x")
_USER_PROCESS = 7


class UtmpSource:
    """Logged-in users from utmp: one session per terminal line (ssh, console, xrdp)."""

    name = "utmp"

    def __init__(self, path: str = "/var/run/utmp") -> None:
        self.path = Path(path)

    def sessions(self) -> list[Seen] | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError:
            return None
        found: list[Seen] = []
        for offset in range(0, len(data) - _UTMP.size + 1, _UTMP.size):
            kind, pid, line, _id, user, host, *_rest = _UTMP.unpack_from(data, offset)
            if kind != _USER_PROCESS or not user.strip(b"\0"):
                continue
            if pid > 0 and not Path(f"/proc/{pid}").exists():
                continue  # a stale entry of a process that died without logging out
            name = user.rstrip(b"\0").decode("utf-8", "replace")
            tty = line.rstrip(b"\0").decode("utf-8", "replace")
            remote = host.rstrip(b"\0").decode("utf-8", "replace")
            found.append(
                Seen(
                    key=f"utmp-{tty}",
                    user=name,
                    client_address=_address(remote.split(":")[0]) if remote else "",
                    protocol="ssh" if remote else "console",
                )
            )
        return found


# --- systemd-logind ---------------------------------------------------------------------
class LogindSource:
    """User sessions from systemd-logind through ``loginctl`` (its D-Bus API's CLI)."""

    name = "logind"

    def __init__(self, idle_threshold_s: float) -> None:
        self.tool = shutil.which("loginctl") or "loginctl"
        self.idle_threshold_s = idle_threshold_s

    @staticmethod
    def available() -> bool:
        """logind runs here (the directory exists only while it does)."""
        return Path("/run/systemd/seats").is_dir() and shutil.which("loginctl") is not None

    def _run(self, *args: str) -> str | None:
        try:
            done = subprocess.run(
                [self.tool, *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    def sessions(self) -> list[Seen] | None:
        listing = self._run("list-sessions", "--no-legend", "--no-pager")
        if listing is None:
            return None
        found: list[Seen] = []
        for line in listing.splitlines():
            if not line.split():
                continue
            sid = line.split()[0]
            shown = self._run(
                "show-session",
                sid,
                "-p",
                "Name",
                "-p",
                "State",
                "-p",
                "LockedHint",
                "-p",
                "IdleHint",
                "-p",
                "RemoteHost",
                "-p",
                "Class",
                "-p",
                "Type",
            )
            if shown is None:
                continue
            props = dict(p.split("=", 1) for p in shown.splitlines() if "=" in p)
            if props.get("Class") != "user" or props.get("State") == "closing":
                continue
            found.append(
                Seen(
                    key=f"logind-{sid}",
                    user=props.get("Name", ""),
                    connected=props.get("State") in ("active", "online"),
                    locked=props.get("LockedHint") == "yes",
                    idle_s=self.idle_threshold_s if props.get("IdleHint") == "yes" else 0.0,
                    client_address=_address(props.get("RemoteHost", "")),
                    protocol=props.get("Type", ""),
                )
            )
        return found

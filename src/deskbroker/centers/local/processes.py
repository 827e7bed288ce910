"""The processes of a local desktop: start an Xvnc and its session as the session's
user, tell whether they still run, signal and stop them.

A process is known by its pid *and* its start time (``/proc/<pid>/stat``), so a pid the
kernel has since given to another program is never signalled. The broker's own
children are kept (``_children``) so they are reaped and never linger as zombies; those
of an earlier broker process belong to init, which reaps them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from deskbroker.errors import CenterError

_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()
# What a session inherits from the environment: nothing of the broker's own (its
# database URL, its keys), only what a login would set.
_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class RunAs:
    """Who a desktop's processes run as; ``switch`` when the broker must drop root."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str
    switch: bool


def run_as(session_user: str | None) -> RunAs:
    """The account sessions run as. A broker running as root drops to ``session_user``
    (never root itself); any other broker can only run them as itself."""
    me = os.geteuid()
    if me == 0:
        if session_user is None:
            raise CenterError(
                "the broker runs as root: set the local center's session_user to the "
                "Unix user its sessions run as (they never run as root)"
            )
        try:
            entry = pwd.getpwnam(session_user)
        except KeyError:
            raise CenterError(f"session_user {session_user!r} is no user of this host") from None
        if entry.pw_uid == 0:
            raise CenterError("session_user may not be root: sessions never run as root")
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        return RunAs(
            entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir, entry.pw_shell, True
        )
    entry = pwd.getpwuid(me)
    if session_user not in (None, entry.pw_name):
        raise CenterError(
            f"the broker runs as {entry.pw_name}, not root: it cannot run sessions as "
            f"{session_user}; clear session_user or run them as {entry.pw_name}"
        )
    return RunAs(
        entry.pw_name, me, os.getegid(), tuple(os.getgroups()), entry.pw_dir, entry.pw_shell, False
    )


def reachable(path: Path, who: RunAs) -> bool:
    """Whether ``who`` may traverse every directory above ``path`` (root may always)."""
    if not who.switch:
        return True
    for parent in path.parents:
        mode = parent.stat()
        if mode.st_uid == who.uid:
            bit = stat.S_IXUSR
        elif mode.st_gid in who.groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not mode.st_mode & bit:
            return False
    return True


def environment(who: RunAs, display: int | None) -> dict[str, str]:
    env = {
        "HOME": who.home or "/",
        "USER": who.name,
        "LOGNAME": who.name,
        "SHELL": who.shell or "/bin/sh",
        "PATH": _PATH,
        "LANG": "C.UTF-8",
    }
    if display is not None:
        env["DISPLAY"] = f":{display}"
    return env


def spawn(argv: list[str], who: RunAs, display: int | None, log: Path) -> tuple[int, int]:
    """Start ``argv`` as ``who`` in its own session (so the whole group can be signalled)
    with a clean environment; returns its pid and start time."""
    cwd = who.home if who.home and Path(who.home).is_dir() else "/"
    # The log is the broker's (0600): the child writes through the inherited descriptor.
    with os.fdopen(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=environment(who, display),
                cwd=cwd,
                start_new_session=True,
                umask=0o077,
                close_fds=True,
                # None: no change (a broker that is not root runs them as itself).
                user=who.uid if who.switch else None,
                group=who.gid if who.switch else None,
                extra_groups=list(who.groups) if who.switch else None,
            )
        except OSError as exc:
            raise CenterError(f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
    with _children_lock:
        _children[process.pid] = process
    return process.pid, started_at(process.pid) or 0


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may hold spaces: the fields follow the last ")".
    return raw.rsplit(")", 1)[1].split()


def started_at(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; ``None`` when it is gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process: a killed one its parent has not reaped yet (a
    zombie) holds nothing, not even the display it had locked."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _ended(pid: int, start: int) -> bool:
    """Whether the process that started at ``start`` under ``pid`` has ended: its pid is
    free, or held by its own zombie (one an init that does not reap leaves for good).
    Either way no other process leads group ``pid``."""
    fields = _stat_fields(pid)
    return fields is None or (int(fields[19]) == start and fields[0] in ("Z", "X"))


def _group_lives(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs; a zombie has let go of all it held."""
    for entry in Path("/proc").iterdir():
        fields = _stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def state(pid: int, start: int) -> str:
    """``running``, ``paused`` (stopped by a signal) or ``gone`` for the process that
    started at ``start`` under ``pid``."""
    if pid <= 0:
        return "gone"
    with _children_lock:
        child = _children.get(pid)
        if child is not None and child.poll() is not None:
            del _children[pid]
            return "gone"
    fields = _stat_fields(pid)
    if fields is None or int(fields[19]) != start or fields[0] in ("Z", "X"):
        return "gone"
    return "paused" if fields[0] in ("T", "t") else "running"


def signal_group(pid: int, start: int, signum: int) -> None:
    """Signal the session group ``pid`` leads. The leader must still be the process we
    started; a group whose leader has ended is signalled by its id, which the kernel
    gives no new process while any member lives."""
    if pid <= 0:
        return
    leader = state(pid, start)
    if leader == "gone" and not _ended(pid, start):
        return  # the pid is someone else's now
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


def signal_one(pid: int, start: int, signum: int) -> None:
    if pid > 0 and state(pid, start) != "gone":
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def stop(pid: int, start: int, *, group: bool, grace_s: float = 5.0) -> None:
    """End a process (or its group): SIGCONT in case it is paused, SIGTERM, then SIGKILL
    after ``grace_s``. Returns once it is gone, so its display and port are free."""
    if pid <= 0:
        return  # never started (and never killpg(0): that is the broker's own group)
    send = signal_group if group else signal_one
    send(pid, start, signal.SIGTERM)
    send(pid, start, signal.SIGCONT)
    deadline = time.monotonic() + grace_s
    while state(pid, start) != "gone":
        if time.monotonic() > deadline:
            send(pid, start, signal.SIGKILL)
            deadline = time.monotonic() + grace_s
        time.sleep(0.02)
    if group and _ended(pid, start):
        # Members that outlived their leader (a shell's children, Xvnc's keymap compiler)
        # go too; the group id is no new process's while no process has that pid. They
        # may hold what the leader held (Xvnc's helper inherits its listening socket):
        # wait until they have ended, as SIGKILL only asks, so the port is free on return.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + grace_s
        while _group_lives(pid) and time.monotonic() < deadline:
            time.sleep(0.02)

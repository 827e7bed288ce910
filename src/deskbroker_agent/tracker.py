"""Turn the sources' snapshots into session events, in an order the broker accepts.

The tracker remembers what it last reported of every session (in the state directory,
so that a restarted agent neither logs a session in twice nor forgets to log it out)
and emits the events that carry the broker from that to what the sources see now.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deskbroker_agent.sources import Seen
from deskbroker_agent.spool import write_atomic


@dataclass
class Known:
    user: str
    connected: bool
    locked: bool
    idle: bool


class Tracker:
    """What has been reported of each session, and the diff to the present."""

    def __init__(self, path: Path, idle_threshold_s: float) -> None:
        self.path = path
        self.idle_threshold_s = idle_threshold_s
        self.known: dict[str, Known] = {}
        try:
            raw = json.loads(path.read_text())
            self.known = {k: Known(**v) for k, v in raw.items()}
        except (FileNotFoundError, ValueError, TypeError):
            self.known = {}

    def save(self) -> None:
        data = {k: asdict(v) for k, v in self.known.items()}
        write_atomic(self.path, json.dumps(data).encode())

    def update(self, seen: list[Seen]) -> list[dict[str, Any]]:
        """Events (agent API bodies without seq/key) that bring the broker to ``seen``."""
        now = datetime.now(UTC).isoformat()
        out: list[dict[str, Any]] = []

        def emit(event: str, key: str, user: str, **extra: Any) -> None:
            out.append({"event": event, "user": user, "session_key": key, "at": now, **extra})

        current = {s.key: s for s in seen}
        for key in [k for k in self.known if k not in current]:
            emit("logout", key, self.known.pop(key).user)
        for key, s in current.items():
            idle = (
                s.connected
                and not s.locked
                and s.idle_s is not None
                and s.idle_s >= self.idle_threshold_s
            )
            was = self.known.get(key)
            if was is None or was.user != s.user:
                if was is not None:  # another account on the same line: a new session
                    emit("logout", key, was.user)
                emit("login", key, s.user, protocol=s.protocol, client_address=s.client_address)
                was = self.known[key] = Known(s.user, True, False, False)
            if s.connected != was.connected:
                if s.connected:
                    emit("reconnect", key, s.user, client_address=s.client_address)
                else:
                    emit("disconnect", key, s.user)
                was.connected, was.idle = s.connected, False
                if not s.connected:
                    was.locked = False
            if s.connected and s.locked != was.locked:
                emit("lock" if s.locked else "unlock", key, s.user)
                was.locked, was.idle = s.locked, False
            if s.connected and idle != was.idle:
                emit("idle" if idle else "active", key, s.user)
                was.idle = idle
        if out:
            self.save()
        return out

    def forget(self, key: str) -> dict[str, Any] | None:
        """The session ended by the agent's own hand (a log-off): its logout event."""
        was = self.known.pop(key, None)
        if was is None:
            return None
        self.save()
        return {
            "event": "logout",
            "user": was.user,
            "session_key": key,
            "at": datetime.now(UTC).isoformat(),
        }

"""The actions a broker asks of its agent: log off, lock, send a message.

Each is carried out by what the session's source knows how to drive (loginctl for
logind sessions, Xvnc's own control for a VNC desktop) and answered with whether it
worked and how, so that the broker records the outcome.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deskbroker_agent.sources import XvncSource

log = logging.getLogger("deskbroker_agent.actions")


@dataclass(frozen=True)
class Result:
    ok: bool
    detail: str


class Actions:
    """Carries out one action; knows the sources it may need."""

    def __init__(self, state_dir: Path, xvnc: XvncSource | None) -> None:
        self.messages = state_dir / "messages.log"
        self.xvnc = xvnc

    def _is_xvnc(self, key: str) -> bool:
        return self.xvnc is not None and key == self.xvnc.key

    def message(self, key: str, text: str) -> Result:
        # Every message is also written to the agent's message log: the record of what the
        # user was told, whatever display could show it.
        stamp = datetime.now(UTC).isoformat()
        with self.messages.open("a", encoding="utf-8") as f:
            f.write(f"{stamp} {key or '-'} {text}\n")
        if self.xvnc is not None and (not key or self._is_xvnc(key)):
            tool = shutil.which("xmessage")
            if tool is not None:
                # Not waited for: it stays on screen until the user closes it or it times out.
                subprocess.Popen(
                    [tool, "-display", self.xvnc.display, "-center", "-timeout", "300", text],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env={**os.environ, "DISPLAY": self.xvnc.display},
                )
                return Result(True, f"shown on {self.xvnc.display} with xmessage")
        if key.startswith("logind-") and shutil.which("wall"):
            subprocess.run(["wall", text], capture_output=True, timeout=10, check=False)
            return Result(True, "sent to the session's terminals with wall")
        return Result(True, f"written to {self.messages}")

    def lock(self, key: str) -> Result:
        if key.startswith("logind-"):
            return _loginctl("lock-session", key.removeprefix("logind-"))
        return Result(False, f"session {key} has no screen locker the agent can drive")

    def logoff(self, key: str) -> Result:
        if key.startswith("logind-"):
            return _loginctl("terminate-session", key.removeprefix("logind-"))
        if self.xvnc is not None and self._is_xvnc(key):
            dropped = self.xvnc.disconnect_viewers()
            self.xvnc.end_session()
            return Result(True, "viewers disconnected" if dropped else "session ended")
        return Result(False, f"session {key} is not one the agent can log off")

    def run(self, action: dict[str, Any]) -> Result:
        kind = str(action.get("kind", ""))
        key = str(action.get("session_key") or "")
        try:
            if kind == "message":
                return self.message(key, str(action.get("message", "")))
            if kind == "lock":
                return self.lock(key)
            if kind == "logoff":
                return self.logoff(key)
        except (OSError, subprocess.SubprocessError) as exc:
            return Result(False, f"{kind} failed: {exc}")
        return Result(False, f"this agent does not know the action {kind!r}")


def _loginctl(verb: str, session: str) -> Result:
    done = subprocess.run(
        ["loginctl", verb, session],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if done.returncode == 0:
        return Result(True, f"loginctl {verb} {session}")
    return Result(False, done.stderr.strip() or f"loginctl {verb} failed")

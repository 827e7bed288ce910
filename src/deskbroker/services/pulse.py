"""The engine's heartbeat in this process, for ``/readyz`` to tell a stuck engine."""

from __future__ import annotations

import threading
import time


class Pulse:
    """When this process's engine loop last finished a tick.

    An engine whose loop has not ticked for longer than its lease TTL is stuck: its leases
    run out, other brokers take its work over, and nothing it claims gets done. ``/readyz``
    reports that so an orchestrator can restart the process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: float | None = None
        self._limit_s = 0.0

    def start(self, limit_s: float) -> None:
        """The engine starts; a gap longer than ``limit_s`` between ticks is a stall."""
        with self._lock:
            self._limit_s = limit_s
            self._last = time.monotonic()

    def beat(self) -> None:
        with self._lock:
            self._last = time.monotonic()

    def stop(self) -> None:
        with self._lock:
            self._last = None

    def since_last_tick(self) -> float | None:
        """Seconds since the engine's last tick; ``None`` when it does not run here."""
        with self._lock:
            return None if self._last is None else time.monotonic() - self._last

    def stalled_for(self) -> float | None:
        """Seconds since the last tick when that is past the limit; ``None`` when the
        engine is ticking (or does not run in this process)."""
        gap = self.since_last_tick()
        return gap if gap is not None and gap > self._limit_s else None

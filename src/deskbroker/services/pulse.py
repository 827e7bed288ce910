"""The engine's heartbeat in this process, for ``/readyz`` to tell a stuck engine."""

from __future__ import annotations

import threading
import time


class Pulse:
    """When this process's engine loop last finished a tick.

    An engine whose loop has not ticked for longer than its lease TTL is stuck: its leases
    run out, other brokers take its work over, and nothing it claims gets done. ``/readyz``
    reports that so an orchestrator can restart the process.

    It also tells a saturated engine: every worker busy (each waiting on a cloud that
    does not answer, say) for longer than the lease TTL, while the loop itself still
    ticks. Then nothing else (builds, timers, retention) runs for any tenant.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: float | None = None
        self._limit_s = 0.0
        self._full_since: float | None = None  # every worker busy since then
        self._workers = 0

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
            self._full_since = None

    def workers(self, busy: int, total: int) -> None:
        """How many of the engine's ``total`` workers are busy, after a tick."""
        with self._lock:
            self._workers = total
            if busy < total:
                self._full_since = None
            elif self._full_since is None:
                self._full_since = time.monotonic()

    def saturated_for(self) -> tuple[float, int] | None:
        """Seconds every worker has been busy, and how many there are, when that is
        past the limit; ``None`` otherwise."""
        with self._lock:
            if self._full_since is None or self._last is None:
                return None
            busy_s = time.monotonic() - self._full_since
            return (busy_s, self._workers) if busy_s > self._limit_s else None

    def since_last_tick(self) -> float | None:
        """Seconds since the engine's last tick; ``None`` when it does not run here."""
        with self._lock:
            return None if self._last is None else time.monotonic() - self._last

    def stalled_for(self) -> float | None:
        """Seconds since the last tick when that is past the limit; ``None`` when the
        engine is ticking (or does not run in this process)."""
        gap = self.since_last_tick()
        return gap if gap is not None and gap > self._limit_s else None

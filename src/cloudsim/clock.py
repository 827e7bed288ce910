"""Simulated time: a clock that runs at a chosen speed, and events that fire on it."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

Event = Callable[[float], None]


class SimClock:
    """Seconds of simulated time.

    Durations of simulated work (builds, power operations) are measured on this clock, so a
    speed of 20 makes a one-second build take 50 ms of real time.  Wall-clock timestamps in
    API bodies stay real: clients compare them with their own clocks.
    """

    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("clock speed must be positive")
        self._lock = threading.Lock()
        self._speed = speed
        self._real_base = time.monotonic()
        self._sim_base = 0.0

    def now(self) -> float:
        """Current simulated time in seconds since the clock was made."""
        with self._lock:
            return self._sim_base + (time.monotonic() - self._real_base) * self._speed

    @property
    def speed(self) -> float:
        """How many simulated seconds pass per real second."""
        return self._speed

    def set_speed(self, speed: float) -> None:
        """Change the speed from now on without making simulated time jump."""
        if speed <= 0:
            raise ValueError("clock speed must be positive")
        with self._lock:
            real = time.monotonic()
            self._sim_base += (real - self._real_base) * self._speed
            self._real_base = real
            self._speed = speed

    def advance(self, seconds: float) -> None:
        """Jump simulated time forward, e.g. to finish every pending build at once."""
        if seconds < 0:
            raise ValueError("cannot move the clock backwards")
        with self._lock:
            self._sim_base += seconds

    def real_seconds(self, sim_seconds: float) -> float:
        """Real time that the given stretch of simulated time takes at the current speed."""
        return max(0.0, sim_seconds) / self._speed


class Scheduler:
    """A heap of events keyed by simulated time.

    Whoever holds the state lock calls :meth:`run_due`; events scheduled by an event for a
    time already passed run in the same call, so a clock jump settles whole chains.
    """

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Event]] = []
        self._seq = itertools.count()
        self.wakeup = threading.Event()

    def call_at(self, due: float, event: Event) -> None:
        """Run ``event(due)`` once simulated time reaches ``due``."""
        heapq.heappush(self._heap, (due, next(self._seq), event))
        self.wakeup.set()

    def run_due(self) -> int:
        """Fire every event that is due; returns how many ran."""
        ran = 0
        now = self.clock.now()
        while self._heap and self._heap[0][0] <= now:
            due, _, event = heapq.heappop(self._heap)
            event(due)
            ran += 1
        return ran

    def next_due(self) -> float | None:
        """Simulated time of the earliest pending event, if any."""
        return self._heap[0][0] if self._heap else None

    def clear(self) -> None:
        """Drop every pending event (used by reset)."""
        self._heap.clear()

    def __len__(self) -> int:
        return len(self._heap)

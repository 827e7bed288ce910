"""Sliding windows of what each key (a desktop, a user) did in the last minute, counted
in this broker worker's memory.

Counting in the database would cost the write a limit is there to spare, so a limit
kept here is per worker process: a cluster of K workers takes K times the limit from
one key at most, which is still bounded, and a restarted worker starts counting afresh.
Memory is bounded: a key's entry holds at most the limit's number of instants, and a key
silent for a whole window is forgotten.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

# "Per minute": the window the settings' names promise.
WINDOW_S = 60.0


class SlidingWindows:
    """Per-key sliding windows of counted instants, shared by the worker's request
    threads (routes run on a thread pool: every access holds the lock).

    ``clock`` returns seconds on a monotonic scale (a test gives its own)."""

    def __init__(
        self, *, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        # key -> the instants (oldest first) counted inside the window.
        self._taken: dict[str, deque[float]] = {}
        # When every idle key is next forgotten: a sweep of the whole map once per
        # window keeps it to the keys heard from lately, at a cost spread thin.
        self._next_sweep = clock() + window_s

    def admit(self, key: str, limit: int) -> tuple[float | None, int]:
        """Count one for ``key`` and return its instant (for ``give_back``) and 0; or,
        when ``limit`` were counted in the last window already, count nothing and return
        None and the whole seconds until one more fits."""
        with self._lock:
            now = self._clock()
            taken = self._window(key, now)
            if len(taken) >= limit:
                return None, self._wait(taken, now)
            taken.append(now)
            return now, 0

    def count(self, key: str) -> float:
        """Count one for ``key`` whatever its window holds (what was let through by a
        ``wait`` looked at before it); its instant."""
        with self._lock:
            now = self._clock()
            self._window(key, now).append(now)
            return now

    def wait(self, key: str, limit: int) -> int:
        """The whole seconds until ``key`` may be counted once more (0: it may now);
        counts nothing."""
        with self._lock:
            now = self._clock()
            if key not in self._taken:  # a look adds no entry: nobody can grow the map
                return 0
            taken = self._window(key, now)
            return self._wait(taken, now) if len(taken) >= limit else 0

    def give_back(self, key: str, instant: float) -> None:
        """Uncount what was counted at ``instant`` (it turned out not to be ``key``'s)."""
        with self._lock:
            taken = self._taken.get(key)
            if taken is None:
                return
            try:
                taken.remove(instant)
            except ValueError:  # already out of the window
                return
            if not taken:
                del self._taken[key]

    def keys(self) -> int:
        """How many keys are remembered (idle ones are forgotten)."""
        with self._lock:
            return len(self._taken)

    def _window(self, key: str, now: float) -> deque[float]:
        # Called with the lock held: ``key``'s instants inside the window.
        self._sweep(now)
        taken = self._taken.get(key)
        if taken is None:
            taken = self._taken[key] = deque()
        horizon = now - self.window_s
        while taken and taken[0] <= horizon:
            taken.popleft()
        return taken

    def _wait(self, taken: deque[float], now: float) -> int:
        # The oldest instant leaves the window first; its slot is the next free one.
        return max(1, math.ceil(taken[0] + self.window_s - now))

    def _sweep(self, now: float) -> None:
        # Called with the lock held.
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.window_s
        horizon = now - self.window_s
        for key in [k for k, taken in self._taken.items() if not taken or taken[-1] <= horizon]:
            del self._taken[key]

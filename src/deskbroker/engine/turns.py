"""How many of a node's engine workers one center's work holds at once.

A center whose cloud drips its answers (or never answers) must not take the workers that
every other tenant's builds, timers and scans need: each center's work (its scan and
leak sweep, its builds and build steps, the plan timers of its desktops, the removals,
rebuilds and volume calls of its pools) takes a turn before it runs, and at most
``share`` turns of a center are out at once. Work refused a turn waits ``TURN_WAIT_S``,
unleased, and is claimed again (a pool's rebuilds, at its next round).
"""

from __future__ import annotations

import threading
from collections import Counter

# How long work refused a turn waits before it is claimed again.
TURN_WAIT_S = 1.0


class NoTurn(Exception):
    """A job's work found its center holding its share of turns: the job runs again after
    ``TURN_WAIT_S``, not counted as a failure."""


class CenterTurns:
    """The turns out per center, shared by the loop and the engine's workers."""

    def __init__(self, share: int) -> None:
        self.share = share
        self._out: Counter[str] = Counter()
        self._lock = threading.Lock()

    def room(self, center_id: str) -> int:
        """How many more turns the center may take now."""
        with self._lock:
            return max(0, self.share - self._out[center_id])

    def take(self, center_id: str) -> bool:
        """A turn for ``center_id``'s work, unless the center holds its share already."""
        with self._lock:
            if self._out[center_id] >= self.share:
                return False
            self._out[center_id] += 1
            return True

    def count(self, center_id: str) -> None:
        """A turn taken without asking: work claimed within ``room`` (counted before it
        runs, so the next tick's room sees it)."""
        with self._lock:
            self._out[center_id] += 1

    def end(self, center_id: str) -> None:
        with self._lock:
            self._out[center_id] -= 1
            if self._out[center_id] <= 0:
                del self._out[center_id]

"""How many of a node's engine workers one center's work, and one tenant's, hold at once.

A center whose cloud drips its answers (or never answers) must not take the workers that
every other tenant's builds, timers and scans need: each center's work (its scan and
leak sweep, its builds and build steps, the plan timers of its desktops, the removals,
rebuilds and volume calls of its pools) takes a turn before it runs, and at most
``share`` turns of a center are out at once. A tenant administrator with many such
centers (of several kinds: each driver family bounds its own hung calls per tenant,
none counts the others') must not take them all either: at most ``tenant_share`` turns
of one tenant's centers are out at once, so the rest of the workers stay for the other
tenants (and the node's readiness, which reports every worker busy, holds). Work refused
a turn waits ``TURN_WAIT_S``, unleased, and is claimed again (a pool's rebuilds, at its
next round).
"""

from __future__ import annotations

import threading
from collections import Counter

# How long work refused a turn waits before it is claimed again.
TURN_WAIT_S = 1.0


class NoTurn(Exception):
    """A job's work found its center holding its share of turns: the job runs again after
    ``TURN_WAIT_S``, not counted as a failure."""


def tenant_share(workers: int, configured: int | None = None) -> int:
    """The turns one tenant's centers may hold at once: ``configured``, or all the workers
    but a quarter of them kept for the other tenants (none kept below four workers, a
    node too small to share)."""
    if configured is not None:
        return max(1, min(configured, workers))
    return max(1, workers - workers // 4)


class CenterTurns:
    """The turns out per center and per tenant, shared by the loop and the engine's
    workers."""

    def __init__(self, share: int, tenant_share: int | None = None) -> None:
        self.share = share
        self.tenant_share = tenant_share if tenant_share is not None else 2**31
        self._out: Counter[str] = Counter()
        self._tenants: Counter[str] = Counter()
        self._lock = threading.Lock()

    def room(self, center_id: str, tenant_id: str) -> int:
        """How many more turns the center may take now."""
        with self._lock:
            return max(
                0,
                min(
                    self.share - self._out[center_id],
                    self.tenant_share - self._tenants[tenant_id],
                ),
            )

    def take(self, center_id: str, tenant_id: str) -> bool:
        """A turn for ``center_id``'s work, unless the center, or its tenant, holds its
        share already."""
        with self._lock:
            if self._out[center_id] >= self.share:
                return False
            if self._tenants[tenant_id] >= self.tenant_share:
                return False
            self._out[center_id] += 1
            self._tenants[tenant_id] += 1
            return True

    def count(self, center_id: str, tenant_id: str) -> None:
        """A turn taken without asking: work claimed within ``room`` (counted before it
        runs, so the next tick's room sees it)."""
        with self._lock:
            self._out[center_id] += 1
            self._tenants[tenant_id] += 1

    def end(self, center_id: str, tenant_id: str) -> None:
        with self._lock:
            for counts, key in ((self._out, center_id), (self._tenants, tenant_id)):
                counts[key] -= 1
                if counts[key] <= 0:
                    del counts[key]

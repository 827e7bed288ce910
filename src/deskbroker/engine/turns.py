"""How many of a node's engine workers one center's work, and one tenant's, hold at once.

A center whose cloud drips its answers (or never answers) must not take the workers that
every other tenant's builds, timers and scans need: each center's work (its scan and
leak sweep, its builds and build steps, the plan timers of its desktops, the removals,
rebuilds and volume calls of its pools) takes a turn before it runs, and at most
``share`` turns of a center are out at once. A tenant administrator with many such
centers (of several kinds: each driver family bounds its own hung calls per tenant,
none counts the others') must not take them all either: at most ``tenant_share`` turns
of one tenant's centers are out at once, so the rest of the workers stay for the other
tenants (and the node's readiness, which reports every worker busy, holds).

A share alone does not keep a worker for everyone: two tenants, each within its share
(18 and 6 of 24), hold every worker between them, and a third tenant's builds, timers
and scans wait as long as their clouds hang. So a reserve of the workers (a quarter, less
when a tenant's share is set above the rest: what one tenant alone may hold is never
kept from it) goes only to a tenant holding no turn yet: once ``workers - reserve``
turns are out, a tenant holding one or more is refused as if at its share, and a tenant
with no work running still gets a turn, unless ``reserve`` other tenants with one each
came first. Work refused a turn waits ``TURN_WAIT_S``, unleased, and is claimed again
(a pool's rebuilds, at its next round).
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


def tenant_reserve(workers: int, share: int) -> int:
    """The workers kept for tenants holding no turn: a quarter (none below four workers,
    a node too small to share), but never any of the ``share`` one tenant alone may
    hold: a single-tenant broker that opens every worker to its tenant keeps none."""
    return max(0, min(workers // 4, workers - share))


class CenterTurns:
    """The turns out per center and per tenant, shared by the loop and the engine's
    workers. Without ``workers`` the turns out are not bounded as a whole, and nothing
    is kept in reserve."""

    def __init__(
        self,
        share: int,
        tenant_share: int | None = None,
        workers: int | None = None,
        reserve: int | None = None,
    ) -> None:
        self.share = share
        self.tenant_share = tenant_share if tenant_share is not None else 2**31
        self.workers = workers if workers is not None else 2**31
        if workers is None:
            self.reserve = 0
        else:
            wanted = workers // 4 if reserve is None else reserve
            self.reserve = max(0, min(wanted, workers))
        self._out: Counter[str] = Counter()
        self._tenants: Counter[str] = Counter()
        self._total = 0
        self._lock = threading.Lock()

    @property
    def out(self) -> int:
        """Turns out, of every center."""
        with self._lock:
            return self._total

    def room(self, center_id: str, tenant_id: str) -> int:
        """How many more turns the center may take now: as many as ``take`` would give,
        one after another."""
        with self._lock:
            held = self._tenants[tenant_id]
            # Turns up to ``workers - reserve`` go to anyone; a tenant holding none may
            # take one more, from the reserve.
            unreserved = self.workers - self.reserve - self._total
            reserved = max(unreserved, 1) if held == 0 else unreserved
            return max(
                0,
                min(
                    self.share - self._out[center_id],
                    self.tenant_share - held,
                    self.workers - self._total,
                    reserved,
                ),
            )

    def take(self, center_id: str, tenant_id: str) -> bool:
        """A turn for ``center_id``'s work, unless the center, or its tenant, holds its
        share already, or every worker is taken, or only the reserve is left and the
        tenant holds a turn."""
        with self._lock:
            held = self._tenants[tenant_id]
            if self._out[center_id] >= self.share or held >= self.tenant_share:
                return False
            if self._total >= self.workers:
                return False
            if held and self._total >= self.workers - self.reserve:
                return False
            self._out[center_id] += 1
            self._tenants[tenant_id] += 1
            self._total += 1
            return True

    def count(self, center_id: str, tenant_id: str) -> None:
        """A turn taken without asking: work claimed within ``room`` (counted before it
        runs, so the next tick's room sees it)."""
        with self._lock:
            self._out[center_id] += 1
            self._tenants[tenant_id] += 1
            self._total += 1

    def end(self, center_id: str, tenant_id: str) -> None:
        with self._lock:
            self._total -= 1
            for counts, key in ((self._out, center_id), (self._tenants, tenant_id)):
                counts[key] -= 1
                if counts[key] <= 0:
                    del counts[key]

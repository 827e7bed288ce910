"""Pool history: the engine's samples of a pool's counts over a time window, for charts
and capacity planning."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from deskbroker.domain.timestamps import aware
from deskbroker.errors import NotFound
from deskbroker.services.context import BrokerContext
from deskbroker.store import pool_stats
from deskbroker.store.tables import utcnow

# The counts each sample carries (engine.maintenance.pool_stats writes them).
COUNTS = ("total", "unassigned", "in_flight", "waiting_users")
MAX_SAMPLES = 2000


@dataclass(frozen=True)
class Point:
    """A pool's counts at one moment."""

    at: datetime
    total: int
    unassigned: int
    in_flight: int
    waiting_users: int


@dataclass(frozen=True)
class History:
    pool_id: str
    pool_name: str
    since: datetime
    points: list[Point]


def history(
    ctx: BrokerContext, pool_id: str, tenant_id: str | None, hours: int, limit: int
) -> History:
    """The pool's samples of the last ``hours`` (the newest ``limit`` of them). A pool of
    another tenant answers as one that never existed."""
    since = utcnow() - timedelta(hours=hours)
    with ctx.db.read() as session:
        pool = pool_stats.pool_in_scope(session, pool_id, tenant_id)
        if pool is None:
            raise NotFound(f"pool {pool_id} does not exist")
        name = pool.name
        found = pool_stats.samples(session, pool_id, since, min(limit, MAX_SAMPLES))
    points = [Point(aware(s.at), *(int(s.counts.get(key) or 0) for key in COUNTS)) for s in found]
    return History(pool_id, name, since, points)

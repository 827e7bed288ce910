"""Reading the pool statistics the engine samples (``engine.maintenance.pool_stats``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from deskbroker.store.db import Unit as Session
from deskbroker.store.tables import Pool, PoolStat


@dataclass(frozen=True)
class Sample:
    """One sample of a pool's counts."""

    at: datetime
    counts: dict[str, Any]


def pool_in_scope(session: Session, pool_id: str, tenant_id: str | None) -> Pool | None:
    """The pool, when the caller's tenant (``None``: any tenant) holds it."""
    pool = session.get(Pool, pool_id)
    if pool is None or (tenant_id is not None and pool.tenant_id != tenant_id):
        return None
    return pool


def samples(session: Session, pool_id: str, since: datetime, limit: int) -> list[Sample]:
    """The pool's samples taken at or after ``since``, oldest first; the newest ``limit``
    when there are more (a chart wants the recent end)."""
    rows = session.execute(
        select(PoolStat.at, PoolStat.counts)
        .where(PoolStat.pool_id == pool_id, PoolStat.at >= since)
        .order_by(PoolStat.at.desc(), PoolStat.id.desc())
        .limit(limit)
    ).all()
    return [Sample(at, dict(counts or {})) for at, counts in reversed(rows)]

"""Pool names by id, for answers that name the pools they mention, and how often a pool
releases a desktop, for answers that estimate a queue's wait."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.orm import Session

from deskbroker.store.tables import Pool


def names(session: Session, pool_ids: Collection[str]) -> dict[str, str]:
    """Each existing pool's name by id (one statement; none for no ids)."""
    if not pool_ids:
        return {}
    rows = session.execute(select(Pool.id, Pool.name).where(Pool.id.in_(list(pool_ids)))).all()
    return {pool_id: name for pool_id, name in rows}


def release_intervals(session: Session, pool_ids: Collection[str]) -> dict[str, float | None]:
    """Each existing pool's learned time between releases, by id (one statement; none
    for no ids). Read from the row, not the configuration cache: every release moves
    it, and it is no configuration."""
    if not pool_ids:
        return {}
    rows = session.execute(
        select(Pool.id, Pool.release_interval_s).where(Pool.id.in_(list(pool_ids)))
    ).all()
    return {pool_id: interval for pool_id, interval in rows}

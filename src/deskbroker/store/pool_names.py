"""Pool names by id, for answers that name the pools they mention."""

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

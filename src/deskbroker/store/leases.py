"""Leases on rows (jobs, timers, provisioning tasks) so a cluster shares the work.

A row is claimed with one statement; PostgreSQL skips rows another broker is claiming,
SQLite serialises writers. A lease that expires (its broker died) is claimable again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session


def claim_due(
    session: Session,
    model: Any,
    due_column: Any,
    *,
    owner: str,
    now: datetime,
    ttl_s: float,
    limit: int = 1,
    where: Sequence[ColumnElement[bool]] = (),
) -> list[str]:
    """Lease up to ``limit`` rows that are due and not leased; returns their ids."""
    free = or_(model.lease_expires_at.is_(None), model.lease_expires_at < now)
    candidates = (
        select(model.id)
        .where(due_column <= now, free, *where)
        .order_by(due_column)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        update(model)
        .where(model.id.in_(candidates), free)
        .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=ttl_s))
        .returning(model.id)
        .execution_options(synchronize_session=False)
    ).all()
    return [str(r[0]) for r in rows]


def release(session: Session, model: Any, row_id: str, owner: str, **values: Any) -> bool:
    """Drop our lease and write the outcome; a no-op if another broker took it over."""
    result = session.execute(
        update(model)
        .where(model.id == row_id, model.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None, **values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def extend(session: Session, model: Any, row_id: str, owner: str, until: datetime) -> bool:
    result = session.execute(
        update(model)
        .where(model.id == row_id, model.lease_owner == owner)
        .values(lease_expires_at=until)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]

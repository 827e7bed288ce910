"""The reads behind a drain: the desktops a drained desktop, pool or center takes out of
the claim, and the sessions in progress on them (left alone, told through their agent)."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from deskbroker.domain.states import SessionState
from deskbroker.store.tables import Center, Desktop, Pool, PoolMember, SessionRow


def affected_desktops(session: Session, target: Desktop | Pool | Center) -> list[Desktop]:
    """The desktops a drain of ``target`` takes out of the claim, by name."""
    if isinstance(target, Desktop):
        return [target]
    query = select(Desktop).order_by(Desktop.name)
    if isinstance(target, Pool):
        query = query.join(PoolMember, PoolMember.desktop_id == Desktop.id).where(
            PoolMember.pool_id == target.id
        )
    else:
        query = query.where(Desktop.center_id == target.id)
    return list(session.scalars(query.where(Desktop.tenant_id == target.tenant_id)))


def open_sessions(session: Session, desktop_ids: Collection[str]) -> list[SessionRow]:
    """The sessions not logged out on these desktops (what a drain must not touch)."""
    if not desktop_ids:
        return []
    return list(
        session.scalars(
            select(SessionRow)
            .where(
                SessionRow.desktop_id.in_(list(desktop_ids)),
                SessionRow.state != SessionState.LOGGED_OUT.value,
            )
            .order_by(SessionRow.started_at)
        )
    )


def drained_members(session: Session, pool_id: str) -> int:
    """How many of a pool's members are drained, themselves or by their center."""
    drained_centers = select(Center.id).where(Center.drained_at.is_not(None))
    found = session.scalar(
        select(func.count())
        .select_from(Desktop)
        .join(PoolMember, PoolMember.desktop_id == Desktop.id)
        .where(
            PoolMember.pool_id == pool_id,
            Desktop.drained_at.is_not(None) | Desktop.center_id.in_(drained_centers),
        )
    )
    return int(found or 0)

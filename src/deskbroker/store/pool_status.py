"""The reads behind a pool's status, member list and queue list in the admin API."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from deskbroker.store.tables import (
    Desktop,
    PoolMember,
    ProvisioningTask,
    QueueEntry,
    SessionRow,
    User,
)


def _member_ids(pool_id: str) -> Select[tuple[str]]:
    members = select(PoolMember.desktop_id).where(PoolMember.pool_id == pool_id).subquery()
    return select(members.c.desktop_id)


def desktop_counts(session: Session, pool_id: str) -> list[tuple[str, str, bool, int]]:
    """The pool's members counted by (power state, availability, assigned)."""
    assigned = Desktop.assigned_user_id.is_not(None)
    rows = session.execute(
        select(Desktop.power_state, Desktop.availability, assigned, func.count())
        .where(Desktop.id.in_(_member_ids(pool_id)))
        .group_by(Desktop.power_state, Desktop.availability, assigned)
    ).all()
    return [(power, availability, bool(held), int(n)) for power, availability, held, n in rows]


def queue_length(session: Session, pool_id: str) -> int:
    """How many users wait for the pool."""
    waiting = session.scalar(
        select(func.count()).select_from(QueueEntry).where(QueueEntry.pool_id == pool_id)
    )
    return int(waiting or 0)


def task_counts(session: Session, pool_id: str) -> dict[str, int]:
    """The pool's provisioning tasks counted by state."""
    rows = session.execute(
        select(ProvisioningTask.state, func.count())
        .where(ProvisioningTask.pool_id == pool_id)
        .group_by(ProvisioningTask.state)
    ).all()
    return {state: int(n) for state, n in rows}


def desktops_in_session(session: Session, pool_id: str, states: Collection[str]) -> int:
    """How many of the pool's members have a session in one of ``states``."""
    found = session.scalar(
        select(func.count(func.distinct(SessionRow.desktop_id))).where(
            SessionRow.desktop_id.in_(_member_ids(pool_id)),
            SessionRow.state.in_(list(states)),
        )
    )
    return int(found or 0)


def members(session: Session, pool_id: str) -> list[tuple[str, str, str, str | None]]:
    """The pool's members by name: (id, name, power state, assigned user id)."""
    rows = session.execute(
        select(Desktop.id, Desktop.name, Desktop.power_state, Desktop.assigned_user_id)
        .join(PoolMember, PoolMember.desktop_id == Desktop.id)
        .where(PoolMember.pool_id == pool_id)
        .order_by(Desktop.name)
    ).all()
    return [(i, n, p, u) for i, n, p, u in rows]


def queue(session: Session, pool_id: str) -> list[tuple[str, str, datetime]]:
    """Who waits for the pool, first first: (user id, username, since)."""
    rows = session.execute(
        select(QueueEntry.user_id, User.username, QueueEntry.created_at)
        .join(User, User.id == QueueEntry.user_id)
        .where(QueueEntry.pool_id == pool_id)
        .order_by(QueueEntry.id)
    ).all()
    return [(u, name, since) for u, name, since in rows]

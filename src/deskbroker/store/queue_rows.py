"""The pools' queues: a place per waiting user, taken when the claim finds no desktop,
served in order when desktops come free (``services/queues.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, bindparam, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, aliased

from deskbroker.store import advisory
from deskbroker.store.tables import Pool, QueueEntry, utcnow


@dataclass(frozen=True)
class Place:
    """A user's place in a pool's queue (1 = next), and the pool's learned time between
    releases (None before its second release)."""

    position: int
    release_interval_s: float | None


def _queue_lock(session: Session, pool_id: str) -> None:
    """On PostgreSQL, one enqueuer of the pool at a time until it commits, so that each
    counts every place before its own (a transaction's new entry is invisible to others
    until then). A transaction-scoped advisory lock, not the pool's row: nothing else
    (releases, the engine, an administrator's edit) waits on it, and nothing is written.
    SQLite's single writer already orders enqueuers."""
    advisory.xact_lock(session, f"queue:{pool_id}")


def enqueue(
    session: Session,
    *,
    tenant_id: str,
    pool_id: str,
    user_id: str,
    assignment: str = "persistent",
    ordering: str = "running_first",
    skip_lost: bool = False,
) -> Place:
    """Statements 4 and 5: a place in the pool's queue for the user; returns their
    position (1 = next) and the pool's time between releases.

    ``skip_lost`` (the policy entry's ``skip_lost_agents``) travels with the entry so
    that serving it later passes over desktops whose agent is lost.

    The place is the entry's id: the position counts the pool's entries with a lower id.
    A user who already waits keeps their entry and their place."""
    _queue_lock(session, pool_id)
    entry = {
        "tenant_id": tenant_id,
        "pool_id": pool_id,
        "user_id": user_id,
        "assignment": assignment,
        "ordering": ordering,
        "created_at": utcnow(),
        "skip_lost_agents": skip_lost,
    }
    waiting = (
        select(QueueEntry.id)
        .where(QueueEntry.pool_id == pool_id, QueueEntry.user_id == user_id)
        .scalar_subquery()
    )
    if session.get_bind().dialect.name == "postgresql":
        ins = (
            pg_insert(QueueEntry)
            .values(**entry)
            .on_conflict_do_nothing(index_elements=["pool_id", "user_id"])
            .returning(QueueEntry.id)
            .cte("ins")
        )
        # The new entry is not visible to the rest of its own statement: count those
        # with a lower id, and add the user's own place.
        mine: ColumnElement[Any] = func.coalesce(select(ins.c.id).scalar_subquery(), waiting)
    else:
        session.execute(
            sqlite_insert(QueueEntry)
            .values(**entry)
            .on_conflict_do_nothing(index_elements=["pool_id", "user_id"])
        )
        mine = waiting
    # The pool's learned time between releases rides on the count (for the wait's
    # estimate): read from the row, since every release moves it.
    interval = select(Pool.release_interval_s).where(Pool.id == pool_id).scalar_subquery()
    ahead, release_interval_s = session.execute(
        select(func.count(), interval)
        .select_from(QueueEntry)
        .where(QueueEntry.pool_id == pool_id, QueueEntry.id < mine)
    ).one()
    return Place(int(ahead or 0) + 1, release_interval_s)


def leave_queue(session: Session, *, pool_id: str, user_id: str) -> None:
    """A queued user got a desktop some other way (a re-login found one free)."""
    session.execute(
        delete(QueueEntry).where(QueueEntry.pool_id == pool_id, QueueEntry.user_id == user_id)
    )


def hold_places(session: Session, user_id: str) -> None:
    """Lock the user's places in every queue until the unit ends: a serving that is
    giving them a desktop now is waited for (it holds the place's lock), and servings
    after this pass them over (``next_in_queue`` skips a locked place)."""
    session.execute(
        select(QueueEntry.id).where(QueueEntry.user_id == user_id).with_for_update()
    ).all()


def queue_positions(session: Session, user_id: str) -> list[tuple[str, int]]:
    """Exact positions of the user in every queue they wait in (one statement)."""
    rows = session.execute(_QUEUE_POSITIONS, {"user_id": user_id}).all()
    return [(str(pool_id), int(n or 0) + 1) for pool_id, n in rows]


def _queue_positions() -> Any:
    # Built once (every offers request reads it): an aliased entity's columns are costly
    # to build.
    before = aliased(QueueEntry)
    ahead = (
        select(func.count())
        .where(before.pool_id == QueueEntry.pool_id, before.id < QueueEntry.id)
        .scalar_subquery()
    )
    return (
        select(QueueEntry.pool_id, ahead)
        .where(QueueEntry.user_id == bindparam("user_id"))
        .order_by(QueueEntry.id)
    )


_QUEUE_POSITIONS = _queue_positions()


@dataclass(frozen=True)
class Waiting:
    entry_id: int
    user_id: str
    tenant_id: str
    assignment: str
    ordering: str
    skip_lost: bool = False


def pools_with_queue(session: Session, tenant_id: str) -> list[str]:
    """The tenant's pools where someone waits."""
    found = session.scalars(
        select(QueueEntry.pool_id).where(QueueEntry.tenant_id == tenant_id).distinct()
    )
    return list(found.all())


def next_in_queue(session: Session, pool_id: str) -> Waiting | None:
    """The waiting user with the lowest place (entry id)."""
    row = session.execute(
        select(
            QueueEntry.id,
            QueueEntry.user_id,
            QueueEntry.tenant_id,
            QueueEntry.assignment,
            QueueEntry.ordering,
            QueueEntry.skip_lost_agents,
        )
        .where(QueueEntry.pool_id == pool_id)
        .order_by(QueueEntry.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()
    if row is None:
        return None
    return Waiting(int(row[0]), str(row[1]), str(row[2]), row[3], row[4], bool(row[5]))


def serve_entry(session: Session, entry_id: int, pool_id: str) -> None:
    """The waiting user got their desktop: everyone behind moves up (positions count)."""
    session.execute(
        delete(QueueEntry).where(QueueEntry.id == entry_id, QueueEntry.pool_id == pool_id)
    )


def count_queue(session: Session, pool_id: str) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(QueueEntry).where(QueueEntry.pool_id == pool_id)
        )
        or 0
    )

"""The SQL of the login path: find the user, claim a desktop, queue, release.

Each function is one statement (two for a queue ticket on SQLite), because the login
path has a budget of six statements.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from deskbroker.domain.accounts import UserRecord
from deskbroker.domain.offers import OfferOrdering
from deskbroker.domain.rules import Identity
from deskbroker.domain.states import CLAIMABLE_POWER, Availability, PowerState
from deskbroker.store.tables import (
    BrokerState,
    Desktop,
    Pool,
    PoolMember,
    QueueEntry,
    User,
    new_id,
    utcnow,
)


@dataclass(frozen=True)
class HeldDesktop:
    id: str
    name: str
    address: str
    power_state: str
    pool_id: str | None
    center_id: str
    attributes: dict[str, Any]


_DESKTOP_COLUMNS = (
    Desktop.id,
    Desktop.name,
    Desktop.address,
    Desktop.power_state,
    Desktop.assigned_pool_id,
    Desktop.center_id,
    Desktop.attributes,
)


def _held(row: Any) -> HeldDesktop:
    return HeldDesktop(
        id=row[0],
        name=row[1],
        address=row[2],
        power_state=row[3],
        pool_id=row[4],
        center_id=row[5],
        attributes=row[6] or {},
    )


def _user_query() -> Any:
    version = select(BrokerState.config_version).where(BrokerState.id == 1).scalar_subquery()
    queued = (
        select(func.count())
        .select_from(QueueEntry)
        .where(QueueEntry.user_id == User.id)
        .scalar_subquery()
    )
    return select(
        User.id,
        User.tenant_id,
        User.identity_source_id,
        User.username,
        User.display_name,
        User.password_hash,
        User.role,
        User.groups,
        User.attributes,
        User.disabled,
        version,
        queued,
        User.email,
        User.totp_enrolled_at.is_not(None),
        User.token_generation,
    )


def _record(row: Any) -> UserRecord:
    return UserRecord(
        id=row[0],
        tenant_id=row[1],
        identity_source_id=row[2],
        username=row[3],
        display_name=row[4],
        password_hash=row[5],
        role=row[6],
        groups=list(row[7] or []),
        attributes=dict(row[8] or {}),
        disabled=bool(row[9]),
        config_version=int(row[10] or 0),
        queued=int(row[11] or 0),
        email=row[12] or "",
        totp_enrolled=bool(row[13]),
        token_generation=int(row[14] or 0),
    )


def find_user(session: Session, identity_source_id: str, username: str) -> UserRecord | None:
    """Statement 1: the user, the config version and whether they wait in a queue."""
    row = session.execute(
        _user_query().where(
            User.identity_source_id == identity_source_id, User.username == username
        )
    ).first()
    return None if row is None else _record(row)


def find_owners(session: Session, tenant_id: str, username: str, *also: str) -> list[UserRecord]:
    """Statement 1 of a password login: every user of the tenant, in any of its sources
    (enabled or not), whose name is ``username`` (or one of ``also``) in any letter case,
    with what
    ``find_user`` reads beside each. Which sources own the name decides where the
    password may go. Both sides go through the database's own lower(), so SQLite (which
    folds ASCII letters only) agrees with itself."""
    rows = session.execute(
        _user_query()
        .where(User.tenant_id == tenant_id, or_(*(folded_name(n) for n in (username, *also))))
        .order_by(User.identity_source_id, User.username)
    ).all()
    return [_record(row) for row in rows]


def folded_name(username: str) -> ColumnElement[bool]:
    """``users.username`` equals ``username`` but for letter case (index
    ix_users_tenant_folded_name, with the tenant)."""
    return func.lower(User.username) == func.lower(literal(username))


def directory_user_changed(record: UserRecord | None, who: Identity) -> bool:
    """Whether the broker's copy of a directory user differs from what the directory says."""
    return record is None or (
        record.username,
        record.display_name,
        record.email,
        sorted(record.groups),
        record.attributes,
    ) != (who.username, who.display_name, who.email, sorted(who.groups), who.attributes)


def upsert_directory_user(
    session: Session,
    *,
    tenant_id: str,
    identity_source_id: str,
    who: Identity,
    known: UserRecord | None,
) -> UserRecord:
    """One statement: create or refresh a directory user's row, keeping role and disabled.

    The same name in two identity sources (two untrusted domains) is two users, because
    rows are unique per (identity source, username)."""
    now = utcnow()
    values = {
        "display_name": who.display_name[:200],
        "email": who.email[:320],
        "groups": sorted(who.groups),
        "attributes": dict(who.attributes),
        "updated_at": now,
    }
    dialect = session.get_bind().dialect.name
    ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(User).values(
        id=new_id(),
        tenant_id=tenant_id,
        identity_source_id=identity_source_id,
        username=who.username[:200],
        created_at=now,
        **values,
    )
    row = session.execute(
        ins.on_conflict_do_update(
            index_elements=[User.identity_source_id, User.username],
            set_={key: getattr(ins.excluded, key) for key in values},
        ).returning(User.id, User.role, User.disabled, User.totp_enrolled_at, User.token_generation)
    ).one()
    return UserRecord(
        id=row[0],
        tenant_id=tenant_id,
        identity_source_id=identity_source_id,
        username=who.username[:200],
        display_name=str(values["display_name"]),
        password_hash=None,
        role=row[1],
        groups=sorted(who.groups),
        attributes=dict(who.attributes),
        disabled=bool(row[2]),
        config_version=known.config_version if known else 0,
        queued=known.queued if known else 0,
        email=str(values["email"]),
        totp_enrolled=row[3] is not None,
        token_generation=int(row[4] or 0),
    )


def config_version(session: Session) -> int:
    return int(session.scalar(select(BrokerState.config_version).where(BrokerState.id == 1)) or 0)


def held_desktops(session: Session, user_id: str) -> list[HeldDesktop]:
    """Statement 2: every desktop the user holds now."""
    rows = session.execute(
        select(*_DESKTOP_COLUMNS).where(Desktop.assigned_user_id == user_id).order_by(Desktop.name)
    ).all()
    return [_held(r) for r in rows]


def _order(ordering: OfferOrdering) -> list[Any]:
    never_used = case((Desktop.last_used_at.is_(None), 0), else_=1)
    running = case((Desktop.power_state == PowerState.RUNNING.value, 0), else_=1)
    match ordering:
        case OfferOrdering.LEAST_RECENTLY_USED:
            return [never_used, Desktop.last_used_at.asc(), Desktop.name]
        case OfferOrdering.MOST_RECENTLY_USED:
            return [never_used.desc(), Desktop.last_used_at.desc(), Desktop.name]
        case OfferOrdering.NAME:
            return [Desktop.name]
        case _:
            return [running, never_used, Desktop.last_used_at.asc(), Desktop.name]


def claimable() -> tuple[ColumnElement[bool], ...]:
    """What makes a desktop free to claim (``domain.states.is_free`` in SQL): the claim,
    the explain answer, the provisioner's counts and the pool status all share it."""
    return (
        Desktop.assigned_user_id.is_(None),
        Desktop.availability == Availability.AVAILABLE.value,
        Desktop.power_state.in_([s.value for s in CLAIMABLE_POWER]),
    )


def free_desktop() -> ColumnElement[bool]:
    """``claimable()`` as one expression, for a count or a filter."""
    return and_(*claimable())


def coming_free(*, starts_unavailable: bool) -> ColumnElement[bool]:
    """``domain.states.is_coming_free`` in SQL: counted with the free desktops by the
    provisioner only."""
    soon = Desktop.power_state == PowerState.BUILDING.value
    if starts_unavailable:
        soon = or_(soon, Desktop.power_state.in_([s.value for s in CLAIMABLE_POWER]))
    return and_(Desktop.assigned_user_id.is_(None), soon)


def free_desktops(session: Session, pool_ids: Collection[str]) -> dict[str, int]:
    """How many desktops a claim could take now, per pool (one grouped read)."""
    if not pool_ids:
        return {}
    rows = session.execute(
        select(PoolMember.pool_id, func.count())
        .join(Desktop, Desktop.id == PoolMember.desktop_id)
        .where(PoolMember.pool_id.in_(list(pool_ids)), *claimable())
        .group_by(PoolMember.pool_id)
    ).all()
    found = {str(pool): int(n) for pool, n in rows}
    return {pool: found.get(pool, 0) for pool in pool_ids}


def claim(
    session: Session,
    *,
    pool_id: str,
    user_id: str,
    kind: str,
    ordering: OfferOrdering,
    now: datetime | None = None,
) -> HeldDesktop | None:
    """Statement 3: hand one free desktop of the pool to the user, atomically.

    PostgreSQL skips rows another claim has locked; SQLite serialises writers, so the
    same statement is safe there without the locking clause.
    """
    now = now or utcnow()
    candidate = (
        select(Desktop.id)
        .join(PoolMember, PoolMember.desktop_id == Desktop.id)
        .where(PoolMember.pool_id == pool_id, *claimable())
        .order_by(*_order(ordering))
        .limit(1)
        .with_for_update(skip_locked=True, of=Desktop)
        .scalar_subquery()
    )
    row = session.execute(
        update(Desktop)
        .where(Desktop.id == candidate, Desktop.assigned_user_id.is_(None))
        .values(
            assigned_user_id=user_id,
            assigned_pool_id=pool_id,
            assignment_kind=kind,
            assigned_at=now,
            updated_at=now,
        )
        .returning(*_DESKTOP_COLUMNS)
        .execution_options(synchronize_session=False)
    ).first()
    return None if row is None else _held(row)


def enqueue(
    session: Session,
    *,
    tenant_id: str,
    pool_id: str,
    user_id: str,
    assignment: str = "persistent",
    ordering: str = "running_first",
) -> int:
    """Statement 4: a queue ticket for the user; returns their position (1 = next).

    The pool row is the ticket counter (its lock orders concurrent callers); a user who
    already waits keeps their ticket and does not move the counter."""
    now = utcnow()
    waiting = (
        select(QueueEntry.id)
        .where(QueueEntry.pool_id == pool_id, QueueEntry.user_id == user_id)
        .exists()
    )
    tick_stmt = (
        update(Pool)
        .where(Pool.id == pool_id, ~waiting)
        .values(queue_tail=Pool.queue_tail + 1)
        .returning(Pool.queue_tail, Pool.queue_head)
    )
    entry = {
        "tenant_id": tenant_id,
        "pool_id": pool_id,
        "user_id": user_id,
        "assignment": assignment,
        "ordering": ordering,
        "created_at": now,
    }
    existing = (
        select(QueueEntry.ticket)
        .where(QueueEntry.pool_id == pool_id, QueueEntry.user_id == user_id)
        .scalar_subquery()
    )
    head_now = select(Pool.queue_head).where(Pool.id == pool_id).scalar_subquery()
    if session.get_bind().dialect.name == "postgresql":
        tick = tick_stmt.cte("tick")
        ins = (
            pg_insert(QueueEntry)
            .from_select(
                [*entry, "ticket"],
                select(*(literal(v) for v in entry.values()), tick.c.queue_tail),
            )
            .on_conflict_do_nothing(index_elements=["pool_id", "user_id"])
            .returning(QueueEntry.ticket)
            .cte("ins")
        )
        row = session.execute(
            select(
                func.coalesce(select(ins.c.ticket).scalar_subquery(), existing),
                func.coalesce(select(tick.c.queue_head).scalar_subquery(), head_now),
            )
        ).one()
        return max(1, int(row[0] or 0) - int(row[1] or 0))
    ticked = session.execute(tick_stmt).first()
    if ticked is None:
        row = session.execute(select(existing, head_now)).one()
        return max(1, int(row[0] or 0) - int(row[1] or 0))
    session.execute(insert(QueueEntry).values(**entry, ticket=ticked[0]))
    return max(1, int(ticked[0]) - int(ticked[1]))


def leave_queue(session: Session, *, pool_id: str, user_id: str) -> None:
    """A queued user got a desktop some other way (a re-login found one free)."""
    removed = session.execute(
        delete(QueueEntry).where(QueueEntry.pool_id == pool_id, QueueEntry.user_id == user_id)
    ).rowcount  # type: ignore[attr-defined]
    if removed:
        session.execute(
            update(Pool).where(Pool.id == pool_id).values(queue_head=Pool.queue_head + 1)
        )


def queue_positions(session: Session, user_id: str) -> list[tuple[str, int]]:
    """Exact positions of the user in every queue they wait in."""
    mine = select(QueueEntry.pool_id, QueueEntry.ticket).where(QueueEntry.user_id == user_id)
    result: list[tuple[str, int]] = []
    for pool_id, ticket in session.execute(mine).all():
        ahead = session.scalar(
            select(func.count())
            .select_from(QueueEntry)
            .where(QueueEntry.pool_id == pool_id, QueueEntry.ticket < ticket)
        )
        result.append((pool_id, int(ahead or 0) + 1))
    return result


@dataclass(frozen=True)
class Waiting:
    entry_id: int
    user_id: str
    tenant_id: str
    assignment: str
    ordering: str


def pools_with_queue(session: Session, tenant_id: str) -> list[str]:
    """The tenant's pools where someone waits."""
    found = session.scalars(
        select(QueueEntry.pool_id).where(QueueEntry.tenant_id == tenant_id).distinct()
    )
    return list(found.all())


def next_in_queue(session: Session, pool_id: str) -> Waiting | None:
    """The waiting user with the lowest ticket."""
    row = session.execute(
        select(
            QueueEntry.id,
            QueueEntry.user_id,
            QueueEntry.tenant_id,
            QueueEntry.assignment,
            QueueEntry.ordering,
        )
        .where(QueueEntry.pool_id == pool_id)
        .order_by(QueueEntry.ticket)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()
    return None if row is None else Waiting(int(row[0]), str(row[1]), str(row[2]), row[3], row[4])


def serve_entry(session: Session, entry_id: int, pool_id: str) -> None:
    session.execute(delete(QueueEntry).where(QueueEntry.id == entry_id))
    session.execute(update(Pool).where(Pool.id == pool_id).values(queue_head=Pool.queue_head + 1))


def assign(
    session: Session, *, desktop_id: str, user_id: str, pool_id: str | None, kind: str
) -> bool:
    """Give a specific free desktop to a user (queue service, admin assignment)."""
    now = utcnow()
    result = session.execute(
        update(Desktop)
        .where(Desktop.id == desktop_id, Desktop.assigned_user_id.is_(None))
        .values(
            assigned_user_id=user_id,
            assigned_pool_id=pool_id,
            assignment_kind=kind,
            assigned_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def unassign(session: Session, *, desktop_id: str, user_id: str | None) -> bool:
    """Release an assignment; with ``user_id`` only if that user still holds it."""
    query = update(Desktop).where(Desktop.id == desktop_id, Desktop.assigned_user_id.is_not(None))
    if user_id is not None:
        query = query.where(Desktop.assigned_user_id == user_id)
    result = session.execute(
        query.values(
            assigned_user_id=None,
            assigned_pool_id=None,
            assignment_kind=None,
            assigned_at=None,
            # The desktop changes hands: its agent token (which the previous holder may have
            # read on the machine) stops working; an administrator mints the next one.
            agent_token_id=None,
            updated_at=utcnow(),
        ).execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def count_queue(session: Session, pool_id: str) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(QueueEntry).where(QueueEntry.pool_id == pool_id)
        )
        or 0
    )

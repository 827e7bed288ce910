"""The SQL of the login path: find the user, claim a desktop, queue, release.

Each function is one statement (two for a queue ticket on SQLite), because the login
path has a budget of six statements.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    bindparam,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from deskbroker import metrics
from deskbroker.domain.accounts import UserRecord
from deskbroker.domain.offers import OfferOrdering
from deskbroker.domain.rules import Identity
from deskbroker.domain.states import CLAIMABLE_POWER, AgentState, PowerState
from deskbroker.errors import Conflict
from deskbroker.store.tables import (
    CLAIM_ORDER,
    FREE_DESKTOP,
    BrokerState,
    Center,
    Desktop,
    Pool,
    PoolMember,
    QueueEntry,
    User,
    new_id,
    utcnow,
)


class ConcurrentClaim(Conflict):
    """Two sign-ins of one user at the same moment both claimed "their first desktop"
    of a pool (``uq_desktops_user_pool_slot``): the later one's unit is rolled back; the
    login path tries once more, and then finds the desktop the other one took."""


@dataclass(frozen=True)
class HeldDesktop:
    id: str
    name: str
    address: str
    power_state: str
    pool_id: str | None
    center_id: str
    attributes: dict[str, Any]
    # Which of the user's desktops from the pool this is (``Desktop.assignment_slot``);
    # None for one an administrator or the queue handed over.
    slot: int | None = None


_DESKTOP_COLUMNS = (
    Desktop.id,
    Desktop.name,
    Desktop.address,
    Desktop.power_state,
    Desktop.assigned_pool_id,
    Desktop.center_id,
    Desktop.attributes,
    Desktop.assignment_slot,
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
        slot=row[7],
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


# The login path's statements are built once, with bound parameters: building one and
# computing its cache key cost more than the driver's whole round trip.
_FIND_USER = _user_query().where(
    User.identity_source_id == bindparam("source_id"), User.username == bindparam("username")
)


def find_user(session: Session, identity_source_id: str, username: str) -> UserRecord | None:
    """Statement 1: the user, the config version and whether they wait in a queue."""
    row = session.execute(
        _FIND_USER, {"source_id": identity_source_id, "username": username}
    ).first()
    return None if row is None else _record(row)


@functools.cache
def _find_owners(names: int) -> Any:
    folded = (
        func.lower(User.username) == func.lower(bindparam(f"name_{i}", type_=String))
        for i in range(names)
    )
    return (
        _user_query()
        .where(User.tenant_id == bindparam("tenant_id"), or_(*folded))
        .order_by(User.identity_source_id, User.username)
    )


def find_owners(session: Session, tenant_id: str, username: str, *also: str) -> list[UserRecord]:
    """Statement 1 of a password login: every user of the tenant, in any of its sources
    (enabled or not), whose name is ``username`` (or one of ``also``) in any letter case,
    with what
    ``find_user`` reads beside each. Which sources own the name decides where the
    password may go. Both sides go through the database's own lower(), so SQLite (which
    folds ASCII letters only) agrees with itself."""
    names = (username, *also)
    params = {"tenant_id": tenant_id, **{f"name_{i}": n for i, n in enumerate(names)}}
    rows = session.execute(_find_owners(len(names)), params).all()
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
    fresh_id = new_id()
    ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(User).values(
        id=fresh_id,
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
        # The row answered is the one this statement inserted, not an existing one (a
        # concurrent first sign-in of the same user that won the race included).
        created_now=row[0] == fresh_id,
    )


def config_version(session: Session) -> int:
    return int(session.scalar(select(BrokerState.config_version).where(BrokerState.id == 1)) or 0)


def held_desktops(session: Session, user_id: str) -> list[HeldDesktop]:
    """Statement 2: every desktop the user holds now."""
    rows = session.execute(_HELD, {"user_id": user_id}).all()
    return [_held(r) for r in rows]


_HELD = (
    select(*_DESKTOP_COLUMNS)
    .where(Desktop.assigned_user_id == bindparam("user_id"))
    .order_by(Desktop.name)
)


def claimable() -> tuple[ColumnElement[bool], ...]:
    """What makes a desktop free to claim (``domain.states.is_free`` in SQL): the claim,
    the explain answer, the provisioner's counts and the pool status all share it. The
    terms of ``tables.FREE_DESKTOP``, the claim's partial indexes' predicate."""
    return tuple(FREE_DESKTOP.clauses)


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


def undrained() -> tuple[ColumnElement[bool], ...]:
    """What a drain takes out of the claim, beyond ``claimable()``: a drained desktop, a
    desktop of a drained center (a drained pool is the claim's own check). Not in the
    claim's index predicate: drains are rare, and a drained desktop the index yields is
    passed over by the first of these terms. The provisioner does not use them: a drained
    desktop still fills its pool's targets (draining is not a reason to build more)."""
    # NOT IN, not NOT EXISTS: PostgreSQL turns the latter into an anti-join that drops
    # the walk of the claim's index for a sort of the pool; NOT IN stays one hashed
    # filter over the (few) drained centers (center_id is never NULL).
    drained_centers = select(Center.id).where(Center.drained_at.is_not(None))
    return (Desktop.drained_at.is_(None), Desktop.center_id.not_in(drained_centers))


def free_desktops(session: Session, pool_ids: Collection[str]) -> dict[str, int]:
    """How many desktops a claim could take now, per pool (one grouped read): none in
    a drained pool."""
    if not pool_ids:
        return {}
    rows = session.execute(
        select(PoolMember.pool_id, func.count())
        .join(Desktop, Desktop.id == PoolMember.desktop_id)
        .join(Pool, Pool.id == PoolMember.pool_id)
        .where(
            PoolMember.pool_id.in_(list(pool_ids)),
            Pool.drained_at.is_(None),
            *claimable(),
            *undrained(),
        )
        .group_by(PoolMember.pool_id)
    ).all()
    found = {str(pool): int(n) for pool, n in rows}
    return {pool: found.get(pool, 0) for pool in pool_ids}


def _free_member(
    tenant_id: str | ColumnElement[str], pool_id: str | ColumnElement[str], skip_lost: bool
) -> tuple[Any, ...]:
    """What makes a desktop one the claim may take from the pool: free, a member, its
    agent not lost (when the entry says so), nothing drained."""
    lost = (Desktop.agent_state != AgentState.LOST.value,) if skip_lost else ()
    member = (
        select(PoolMember.desktop_id)
        .where(PoolMember.pool_id == pool_id, PoolMember.desktop_id == Desktop.id)
        .exists()
    )
    pool_drained = select(Pool.id).where(Pool.id == pool_id, Pool.drained_at.is_not(None)).exists()
    return (
        Desktop.tenant_id == tenant_id,
        FREE_DESKTOP,
        member,
        *lost,
        *undrained(),
        ~pool_drained,
    )


def claim_candidate(
    *,
    tenant_id: str | ColumnElement[str],
    pool_id: str | ColumnElement[str],
    ordering: OfferOrdering,
    skip_lost: bool = False,
) -> Select[str]:
    """The claim's choice: the pool's best free desktop, locked (skipping locked ones).
    Its own function so that a test can ask the database how it plans it."""
    return (
        select(Desktop.id)
        .where(*_free_member(tenant_id, pool_id, skip_lost))
        .order_by(*CLAIM_ORDER[ordering])
        .limit(1)
        .with_for_update(skip_locked=True, of=Desktop)
    )


@functools.cache
def _claim_statement(ordering: OfferOrdering, skip_lost: bool) -> Any:
    """The claim's UPDATE for one pool ordering, built once: the tenant, pool, user and
    times are bound parameters (``claim_*``)."""
    candidate = claim_candidate(
        tenant_id=bindparam("claim_tenant", type_=String),
        pool_id=bindparam("claim_pool", type_=String),
        ordering=ordering,
        skip_lost=skip_lost,
    ).scalar_subquery()
    return (
        update(Desktop)
        .where(Desktop.id == candidate, Desktop.assigned_user_id.is_(None))
        .values(
            assigned_user_id=bindparam("claim_user"),
            assigned_pool_id=bindparam("claim_pool"),
            assignment_kind=bindparam("claim_kind"),
            assignment_slot=bindparam("claim_slot"),
            assigned_at=bindparam("claim_now"),
            updated_at=bindparam("claim_now"),
        )
        .returning(*_DESKTOP_COLUMNS)
        .execution_options(synchronize_session=False)
    )


def claim(
    session: Session,
    *,
    tenant_id: str,
    pool_id: str,
    user_id: str,
    kind: str,
    ordering: OfferOrdering,
    now: datetime | None = None,
    skip_lost: bool = False,
    slot: int | None = None,
) -> HeldDesktop | None:
    """Statement 3: hand one free desktop of the pool to the user, atomically.

    The candidate is the first free desktop of the tenant, in the pool's order, that is a
    member of the pool: the tenant and the order are the columns of the partial index
    ``ix_desktops_free_<ordering>``, so the database walks that index and stops at the
    first member instead of sorting the pool (the cost does not grow with the pool).

    ``skip_lost`` (the policy entry's ``skip_lost_agents``) passes over desktops whose
    agent missed its heartbeats. ``slot`` (a login's claim) is which of the user's
    desktops from this pool this is: a second login of the same user at the same moment
    claiming the same slot fails on ``uq_desktops_user_pool_slot`` (``ConcurrentClaim``).

    PostgreSQL skips rows another claim has locked; SQLite serialises writers, so the
    same statement is safe there without the locking clause.
    """
    params = {
        "claim_tenant": tenant_id,
        "claim_pool": pool_id,
        "claim_user": user_id,
        "claim_kind": kind,
        "claim_slot": slot,
        "claim_now": now or utcnow(),
    }
    statement = _claim_statement(ordering, skip_lost)
    started = time.perf_counter()
    try:
        row = session.execute(statement, params).first()
        if row is None and session.get_bind().dialect.name == "postgresql":
            row = _claim_past_brief_locks(session, statement, params, tenant_id, pool_id, skip_lost)
    except IntegrityError as exc:
        if not _is_double_claim(exc):
            raise
        raise ConcurrentClaim(
            "another sign-in of this user took a desktop from this pool at the same moment; "
            "sign in again to get it"
        ) from exc
    metrics.CLAIM_SECONDS.observe(time.perf_counter() - started)
    return None if row is None else _held(row)


# How long a claim that found every free desktop locked waits, in steps, for them.
LOCKED_RETRIES_S = (0.02, 0.05, 0.1, 0.2)


def _claim_past_brief_locks(
    session: Session,
    statement: Any,
    params: dict[str, Any],
    tenant_id: str,
    pool_id: str,
    skip_lost: bool,
) -> Any:
    """The claim again, after a moment, while the pool still has free desktops that
    another transaction holds locked: an agent's heartbeat or session event on a free
    desktop locks its row for a moment, and a login that skipped it would be queued
    though the desktop is free (with one desktop free, nothing would serve the queue
    until the next release). Another claim's lock ends with that claim, which takes the
    desktop: then none is free any more and this stops."""
    for pause in LOCKED_RETRIES_S:
        if not _free_in_pool(session, tenant_id, pool_id, skip_lost):
            return None
        time.sleep(pause)
        row = session.execute(statement, params).first()
        if row is not None:
            return row
    return None


def _free_in_pool(session: Session, tenant_id: str, pool_id: str, skip_lost: bool) -> bool:
    """Whether the pool has a free desktop, locked or not (a plain read never waits)."""
    found = session.scalar(
        select(Desktop.id).where(*_free_member(tenant_id, pool_id, skip_lost)).limit(1)
    )
    return found is not None


def free_slot(held: Collection[HeldDesktop], pool_id: str) -> int:
    """The lowest slot the user's claimed desktops from ``pool_id`` leave free."""
    taken = {d.slot for d in held if d.pool_id == pool_id and d.slot is not None}
    return next(n for n in range(len(taken) + 1) if n not in taken)


def _is_double_claim(exc: IntegrityError) -> bool:
    text = str(exc.orig)
    return "uq_desktops_user_pool_slot" in text or "desktops.assignment_slot" in text


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
            assignment_slot=None,
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
            assignment_slot=None,
            assigned_at=None,
            # The desktop changes hands: its agent token (which the previous holder may have
            # read on the machine) stops working, and its refresh secret buys a new one only
            # at the live agent's next beat (services/agents.refresh). The event sequence
            # starts again: a number the previous holder pushed up cannot blind the broker
            # to the next holder's sessions.
            agent_token_id=None,
            agent_seq=0,
            updated_at=utcnow(),
        ).execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]

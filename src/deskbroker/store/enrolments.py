"""Tenant enrolment keys and the agents waiting for an administrator: their SQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from deskbroker.domain.states import EnrolmentState, PowerState
from deskbroker.store import advisory
from deskbroker.store.tables import Desktop, EnrolmentKey, PendingEnrolment

# Desktops an enrolling machine cannot be: being deleted, or gone.
_GONE = (PowerState.DELETING.value, PowerState.DELETED.value)


def key_by_hash(session: Session, key_hash: str) -> EnrolmentKey | None:
    """The key, share-locked until the unit ends: a revocation (which locks it for
    update) waits for an enrolment under way, and then sees what it left waiting."""
    return session.scalars(
        select(EnrolmentKey).where(EnrolmentKey.key_hash == key_hash).with_for_update(read=True)
    ).first()


def key(session: Session, key_id: str, *, lock: bool = False) -> EnrolmentKey | None:
    """The key; with ``lock``, locked until the unit ends (a revocation), with its values
    as they are once locked."""
    if not lock:
        return session.get(EnrolmentKey, key_id)
    return session.get(EnrolmentKey, key_id, with_for_update=True, populate_existing=True)


def deny_waiting(
    session: Session,
    key_id: str,
    *,
    states: Sequence[str],
    to: str,
    reason: str,
    actor: str,
    now: datetime,
) -> int:
    """Move the key's enrolments in ``states`` to ``to`` in one statement (what changed
    state since a read, collected or decided, is not touched); how many moved."""
    done = session.execute(
        update(PendingEnrolment)
        .where(PendingEnrolment.key_id == key_id, PendingEnrolment.state.in_(list(states)))
        .values(state=to, reason=reason, decided_by=actor, decided_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(done.rowcount)  # type: ignore[attr-defined]


def key_named(session: Session, tenant_id: str, name: str) -> EnrolmentKey | None:
    return session.scalars(
        select(EnrolmentKey).where(EnrolmentKey.tenant_id == tenant_id, EnrolmentKey.name == name)
    ).first()


def keys(session: Session, tenant_id: str | None) -> list[EnrolmentKey]:
    """The keys of a tenant (every tenant's for ``None``), newest first."""
    query = select(EnrolmentKey).order_by(EnrolmentKey.created_at.desc(), EnrolmentKey.id)
    if tenant_id is not None:
        query = query.where(EnrolmentKey.tenant_id == tenant_id)
    return list(session.scalars(query).all())


def matching_desktops(
    session: Session, tenant_id: str, instance_id: str, addresses: Sequence[str]
) -> list[Desktop]:
    """The tenant's desktops (not deleted) with that instance id, else with one of those
    addresses: at most two, enough to tell one from several."""
    live = (Desktop.tenant_id == tenant_id, Desktop.power_state.notin_(_GONE))
    if instance_id:
        found = session.scalars(
            select(Desktop).where(*live, Desktop.external_id == instance_id).limit(2)
        ).all()
        if found:
            return list(found)
    wanted = sorted({a for a in addresses if a})
    if not wanted:
        return []
    return list(
        session.scalars(select(Desktop).where(*live, Desktop.address.in_(wanted)).limit(2)).all()
    )


def pending_by_poll(session: Session, poll_hash: str) -> PendingEnrolment | None:
    return session.scalars(
        select(PendingEnrolment).where(PendingEnrolment.poll_hash == poll_hash).with_for_update()
    ).first()


def pending(session: Session, pending_id: str) -> PendingEnrolment | None:
    return session.scalars(
        select(PendingEnrolment).where(PendingEnrolment.id == pending_id).with_for_update()
    ).first()


def _waiting_lock(session: Session, tenant_id: str) -> None:
    # Without it two enrolments each counted below the cap (neither sees the other's
    # uncommitted row) and both added theirs. A transaction-scoped advisory lock, not the
    # tenant's row: nothing else waits on it. It is taken last, after the key's share
    # lock and the desktop's lock, and its holder then only counts and inserts: it waits
    # for nothing a revocation (which never takes it) or another enrolment holds.
    # SQLite's single writer already orders enrolments.
    advisory.xact_lock(session, f"enrol-waiting:{tenant_id}")


def waiting_count(session: Session, tenant_id: str, now: datetime) -> int:
    """Enrolments of the tenant still waiting for an administrator, counted by one
    enrolment of the tenant at a time: on PostgreSQL the count is held until the unit
    ends, so one that adds a waiting enrolment commits it before the next counts."""
    _waiting_lock(session, tenant_id)
    return int(
        session.scalar(
            select(func.count())
            .select_from(PendingEnrolment)
            .where(
                PendingEnrolment.tenant_id == tenant_id,
                PendingEnrolment.state == EnrolmentState.PENDING.value,
                PendingEnrolment.expires_at > now,
            )
        )
        or 0
    )


def pendings(
    session: Session,
    tenant_id: str | None,
    state: str | None,
    limit: int,
    offset: int,
) -> tuple[list[PendingEnrolment], int]:
    """Enrolments (of a tenant, or every tenant's for ``None``), newest first, and their
    number."""
    where = []
    if tenant_id is not None:
        where.append(PendingEnrolment.tenant_id == tenant_id)
    if state is not None:
        where.append(PendingEnrolment.state == state)
    total = session.scalar(select(func.count()).select_from(PendingEnrolment).where(*where))
    rows = session.scalars(
        select(PendingEnrolment)
        .where(*where)
        .order_by(PendingEnrolment.created_at.desc(), PendingEnrolment.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return list(rows), int(total or 0)

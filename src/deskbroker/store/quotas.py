"""The SQL of tenant quotas: read or lock a tenant's limits, count what it uses.

Two brokers must not both take the last unit of a quota. Whoever is about to add a
desktop or a session locks the tenant's row first (``FOR NO KEY UPDATE`` on PostgreSQL,
which leaves foreign-key checks of other writers alone; SQLite's ``BEGIN IMMEDIATE``
already serialises writers), then counts, then writes, in one transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Exists, func, select
from sqlalchemy.orm import Session

from deskbroker.domain.quotas import TenantQuota
from deskbroker.domain.states import ACTIVE_SESSION_STATES, PowerState
from deskbroker.store.tables import Desktop, SessionRow, Tenant

_OPEN = [s.value for s in ACTIVE_SESSION_STATES]


def read(session: Session, tenant_id: str, *, lock: bool = False) -> TenantQuota:
    """The tenant's limits; with ``lock``, hold its row until the transaction ends."""
    query = select(Tenant.quota_desktops, Tenant.quota_sessions).where(Tenant.id == tenant_id)
    if lock:
        query = query.with_for_update(key_share=True)
    row = session.execute(query).first()
    return TenantQuota() if row is None else TenantQuota(row[0], row[1])


def desktops_used(session: Session, tenant_id: str) -> int:
    """Desktops that count against the quota: every one not deleted, including those
    still being built or being deleted (their instances still exist)."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Desktop)
            .where(Desktop.tenant_id == tenant_id, Desktop.power_state != PowerState.DELETED.value)
        )
        or 0
    )


def _open_on(desktop_id: Any) -> Exists:
    return (
        select(SessionRow.id)
        .where(
            SessionRow.desktop_id == desktop_id,
            SessionRow.ended_at.is_(None),
            SessionRow.state.in_(_OPEN),
        )
        .exists()
    )


def sessions_used(session: Session, tenant_id: str, granted_since: datetime) -> int:
    """Open sessions as agents report them, plus desktops handed out by a connect since
    ``granted_since`` whose agent has not reported a session yet."""
    open_sessions = (
        select(func.count())
        .select_from(SessionRow)
        .where(
            SessionRow.tenant_id == tenant_id,
            SessionRow.ended_at.is_(None),
            SessionRow.state.in_(_OPEN),
        )
        .scalar_subquery()
    )
    pending = (
        select(func.count())
        .select_from(Desktop)
        .where(
            Desktop.tenant_id == tenant_id,
            Desktop.connect_granted_at >= granted_since,
            ~_open_on(Desktop.id),
        )
        .scalar_subquery()
    )
    row = session.execute(select(open_sessions, pending)).one()
    return int(row[0] or 0) + int(row[1] or 0)


def in_session(session: Session, desktop_id: str, granted_since: datetime) -> bool:
    """Whether a connect to this desktop resumes a session rather than starting one: it
    has an open session, or a connect was granted it since ``granted_since``."""
    granted = (
        select(Desktop.id)
        .where(Desktop.id == desktop_id, Desktop.connect_granted_at >= granted_since)
        .exists()
    )
    row = session.execute(select(_open_on(desktop_id), granted)).one()
    return bool(row[0] or row[1])

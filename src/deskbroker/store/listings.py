"""Pages of what the admin API lists beside its catalog: assignments, sessions, events,
plan timers, API tokens and sign-in lockouts.

Each page is scoped to a tenant (``None``: every tenant, for a global administrator),
narrowed by the filters given (an empty one is no filter), and counted in full.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from deskbroker.domain.permissions import BuiltinRole
from deskbroker.store.row_dicts import columns_of
from deskbroker.store.tables import (
    ApiToken,
    Desktop,
    Event,
    LoginThrottle,
    SessionRow,
    Timer,
    User,
)

# Rows and the total they are a page of.
Page = tuple[list[dict[str, Any]], int]
# A lockout listing shows this many keys at most.
LOCKOUTS_SHOWN = 1000


def _where(query: Select[Any], model: Any, tenant_id: str | None, **equal: Any) -> Select[Any]:
    if tenant_id is not None:
        query = query.where(model.tenant_id == tenant_id)
    for name, value in equal.items():
        if value:
            query = query.where(getattr(model, name) == value)
    return query


def _total(session: Session, query: Select[Any]) -> int:
    return int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)


def _rows(session: Session, query: Select[Any], limit: int, offset: int) -> list[Any]:
    return list(session.scalars(query.limit(limit).offset(offset)).all())


def assigned_desktops(
    session: Session,
    tenant_id: str | None,
    user_id: str | None,
    pool_id: str | None,
    limit: int,
    offset: int,
) -> tuple[list[Desktop], int]:
    """Desktops someone holds, oldest assignment first."""
    query = _where(
        select(Desktop).where(Desktop.assigned_user_id.is_not(None)),
        Desktop,
        tenant_id,
        assigned_user_id=user_id,
        assigned_pool_id=pool_id,
    )
    total = _total(session, query)
    return _rows(session, query.order_by(Desktop.assigned_at, Desktop.id), limit, offset), total


def sessions(
    session: Session,
    tenant_id: str | None,
    filters: dict[str, str | None],
    limit: int,
    offset: int,
) -> Page:
    """User sessions (``filters``: state, user_id, desktop_id), newest first."""
    query = _where(select(SessionRow), SessionRow, tenant_id, **filters)
    total = _total(session, query)
    rows = _rows(session, query.order_by(SessionRow.started_at.desc()), limit, offset)
    return [columns_of(s) for s in rows], total


def events(
    session: Session,
    tenant_id: str | None,
    filters: dict[str, str | None],
    since: datetime | None,
    limit: int,
    offset: int,
) -> Page:
    """Events (``filters``: kind, user_id, desktop_id, pool_id; at or after ``since``),
    newest first."""
    query = _where(select(Event), Event, tenant_id, **filters)
    if since is not None:
        query = query.where(Event.at >= since)
    total = _total(session, query)
    rows = _rows(session, query.order_by(Event.id.desc()), limit, offset)
    return [columns_of(e) for e in rows], total


def timers(
    session: Session,
    tenant_id: str | None,
    desktop_id: str | None,
    plan: str | None,
    limit: int,
    offset: int,
) -> Page:
    """Plan timers waiting to fire, soonest first."""
    query = _where(select(Timer), Timer, tenant_id, desktop_id=desktop_id, plan=plan)
    total = _total(session, query)
    rows = _rows(session, query.order_by(Timer.due_at, Timer.id), limit, offset)
    return [columns_of(t) for t in rows], total


def api_tokens(
    session: Session, tenant_id: str | None, user_id: str | None, limit: int, offset: int
) -> Page:
    """API tokens (the rows, never the tokens), oldest first. A tenant's view (``tenant_id``
    given: not a global administrator) leaves out the global administrators' tokens:
    their names and scopes say what the strongest accounts automate, and nobody below
    may revoke them anyway."""
    query = _where(select(ApiToken), ApiToken, tenant_id, user_id=user_id)
    if tenant_id is not None:
        query = query.where(
            ApiToken.user_id.not_in(
                select(User.id).where(
                    User.tenant_id == tenant_id, User.role == BuiltinRole.GLOBAL_ADMIN.value
                )
            )
        )
    rows = _rows(session, query.order_by(ApiToken.created_at, ApiToken.id), limit, offset)
    total = _total(session, query)
    return [columns_of(t) for t in rows], total


def lockouts(session: Session, tenant_id: str | None) -> list[LoginThrottle]:
    """Failed sign-in counters by key; a tenant's are its accounts' (addresses span
    tenants)."""
    query = select(LoginThrottle).order_by(LoginThrottle.key)
    if tenant_id is not None:
        query = query.where(LoginThrottle.key.startswith(f"account:{tenant_id}:", autoescape=True))
    return list(session.scalars(query.limit(LOCKOUTS_SHOWN)).all())

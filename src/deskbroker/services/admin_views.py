"""What the admin API shows of what users and the engine do: sessions, the event log
and the plan timers waiting to fire. Read only; ``tenant_id`` None is every tenant's."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from deskbroker.services.context import BrokerContext
from deskbroker.store import listings

Page = tuple[list[dict[str, Any]], int]


def sessions(
    ctx: BrokerContext,
    tenant_id: str | None,
    *,
    state: str | None,
    user_id: str | None,
    desktop_id: str | None,
    limit: int,
    offset: int,
) -> Page:
    """User sessions on desktops, newest first."""
    with ctx.db.read() as session:
        return listings.sessions(
            session,
            tenant_id,
            {"state": state, "user_id": user_id, "desktop_id": desktop_id},
            limit,
            offset,
        )


def events(
    ctx: BrokerContext,
    tenant_id: str | None,
    *,
    kind: str | None,
    user_id: str | None,
    desktop_id: str | None,
    pool_id: str | None,
    since: datetime | None,
    limit: int,
    offset: int,
) -> Page:
    """The event log, newest first."""
    with ctx.db.read() as session:
        return listings.events(
            session,
            tenant_id,
            {"kind": kind, "user_id": user_id, "desktop_id": desktop_id, "pool_id": pool_id},
            since,
            limit,
            offset,
        )


def timers(
    ctx: BrokerContext,
    tenant_id: str | None,
    *,
    desktop_id: str | None,
    plan: str | None,
    limit: int,
    offset: int,
) -> Page:
    """Power and release plan actions waiting to fire, soonest first."""
    with ctx.db.read() as session:
        return listings.timers(session, tenant_id, desktop_id, plan, limit, offset)

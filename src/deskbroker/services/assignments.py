"""Assignments an administrator lists, makes and ends.

The desktop's address is where the user's client connects and types, so choosing a
desktop for a user, or taking theirs away, needs standing over that user
(``standing.may_manage``) as well as the assignments permission.
"""

from __future__ import annotations

from typing import Any

from deskbroker.domain.offers import AssignmentKind
from deskbroker.errors import Conflict, InvalidInput, NotFound
from deskbroker.security import TokenClaims
from deskbroker.services import write_context
from deskbroker.services.context import BrokerContext
from deskbroker.services.desktops import is_member, release
from deskbroker.services.standing import may_manage
from deskbroker.store import claims, events, listings
from deskbroker.store.db import Unit
from deskbroker.store.tables import Desktop, Pool, User


def _shown(row: Desktop) -> dict[str, Any]:
    return {
        "desktop_id": row.id,
        "desktop_name": row.name,
        "user_id": row.assigned_user_id,
        "pool_id": row.assigned_pool_id,
        "kind": row.assignment_kind,
        "assigned_at": row.assigned_at.isoformat() if row.assigned_at else None,
    }


def assignments(
    ctx: BrokerContext,
    tenant_id: str | None,
    user_id: str | None,
    pool_id: str | None,
    limit: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    """One page of who holds which desktop (``tenant_id`` None: every tenant's)."""
    with ctx.db.read() as session:
        rows, total = listings.assigned_desktops(
            session, tenant_id, user_id, pool_id, limit, offset
        )
        return [_shown(d) for d in rows], total


def _desktop(session: Unit, desktop_id: str, tenant_id: str | None) -> Desktop | None:
    desktop = session.get(Desktop, desktop_id)
    if desktop is None or (tenant_id is not None and desktop.tenant_id != tenant_id):
        return None
    return desktop


def assign(
    ctx: BrokerContext,
    who: TokenClaims,
    tenant_id: str | None,
    *,
    desktop_id: str,
    user_id: str,
    pool_id: str | None,
    kind: AssignmentKind,
) -> dict[str, Any]:
    """Give a free desktop to a user, as an administrator (``tenant_id``: the tenant the
    administrator sees, None for a global administrator)."""
    with ctx.db.write() as session:
        desktop = _desktop(session, desktop_id, tenant_id)
        if desktop is None:
            raise InvalidInput(f"desktop {desktop_id} does not exist")
        user = session.get(User, user_id)
        if user is None or (tenant_id is not None and user.tenant_id != tenant_id):
            raise InvalidInput(f"user {user_id} does not exist")
        write_context.attach_actor(session, ctx, who)
        may_manage(session, user, "assign a desktop to")
        if user.tenant_id != desktop.tenant_id:
            # Only a global admin sees both: say why, rather than deny what they see.
            raise InvalidInput(
                f"user {user.username} and desktop {desktop.name} are in different tenants"
            )
        if pool_id is not None:
            pool = session.get(Pool, pool_id)
            if pool is None or pool.tenant_id != desktop.tenant_id:
                raise InvalidInput(f"pool {pool_id} does not exist")
            if not is_member(session, pool_id, desktop.id):
                raise InvalidInput(f"desktop {desktop.name} is not in pool {pool.name}")
        if desktop.assigned_user_id is not None:
            raise Conflict(f"desktop {desktop.name} is already assigned")
        if not claims.assign(
            session, desktop_id=desktop.id, user_id=user.id, pool_id=pool_id, kind=kind.value
        ):
            raise Conflict(f"desktop {desktop.name} was assigned by someone else just now")
        events.append(
            session,
            "assign",
            tenant_id=desktop.tenant_id,
            actor=who.username,
            user_id=user.id,
            desktop_id=desktop.id,
            pool_id=pool_id,
            detail={"reason": "admin"},
        )
        session.refresh(desktop)
        return _shown(desktop)


def unassign(ctx: BrokerContext, who: TokenClaims, tenant_id: str | None, desktop_id: str) -> None:
    """End a desktop's assignment, as an administrator, and serve the queues."""
    with ctx.db.write() as session:
        desktop = _desktop(session, desktop_id, tenant_id)
        if desktop is None:
            raise NotFound(f"desktop {desktop_id} does not exist")
        holder = (
            session.get(User, desktop.assigned_user_id)
            if desktop.assigned_user_id is not None
            else None
        )
        if holder is not None:
            # Taking a stronger account's desktop away is choosing its next one.
            write_context.attach_actor(session, ctx, who)
            may_manage(session, holder, "release the desktop of")
        release(
            session,
            desktop_id=desktop.id,
            tenant_id=desktop.tenant_id,
            user_id=None,
            actor=who.username,
        )

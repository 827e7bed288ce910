"""Drain: a desktop, a pool or a center taken out of the claim, and back.

A drained object gives no login a new desktop (``store/claims.undrained`` and the claim's
pool check); what is already assigned stays assigned and sessions in progress go on
untouched. The users of the affected desktops may be told why through their desktops'
agents (a ``message`` action each session's agent pulls with its next heartbeat).
Undraining serves the users who queued meanwhile at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from deskbroker.domain.states import AgentState
from deskbroker.security import TokenClaims
from deskbroker.services import agents, standing, write_context
from deskbroker.services.context import BrokerContext
from deskbroker.services.queues import serve_queues
from deskbroker.store import drain as drain_rows
from deskbroker.store import events
from deskbroker.store.db import Unit
from deskbroker.store.repository import Repository
from deskbroker.store.tables import Center, Desktop, Pool, utcnow

DrainKind = Literal["desktop", "pool", "center"]

_REPOSITORIES: dict[str, Repository[Desktop] | Repository[Pool] | Repository[Center]] = {
    "desktop": Repository(Desktop, "desktop"),
    "pool": Repository(Pool, "pool"),
    "center": Repository(Center, "center"),
}


@dataclass(frozen=True)
class DrainOutcome:
    """What a drain or undrain did, for the administrator."""

    kind: str
    id: str
    name: str
    drained_at: datetime | None
    desktops: int  # desktops the object covers
    sessions: int  # sessions in progress on them, left alone
    messages: int  # messages queued for their agents
    words: str


def _target(
    session: Unit,
    ctx: BrokerContext,
    who: TokenClaims,
    kind: str,
    object_id: str,
    tenant_scope: str | None,
    what: str,
) -> Desktop | Pool | Center:
    target = _REPOSITORIES[kind].get(session, object_id, tenant_scope)
    # The stronger-account rule, as for a change: whoever may not edit the pool, center
    # or desktop a stronger account's desktops come from may not cut it off either.
    write_context.attach_actor(session, ctx, who)
    standing.check_reach(session, target, kind, what)
    return target


def _event_ids(target: Desktop | Pool | Center) -> dict[str, str | None]:
    return {
        "desktop_id": target.id if isinstance(target, Desktop) else None,
        "pool_id": target.id if isinstance(target, Pool) else None,
    }


def drain(
    ctx: BrokerContext,
    who: TokenClaims,
    kind: DrainKind,
    object_id: str,
    tenant_scope: str | None,
    message: str = "",
) -> DrainOutcome:
    """Take ``kind`` ``object_id`` out of the claim; with ``message``, queue it for the
    agent of every affected desktop with a session in progress. Draining a drained
    object changes nothing and sends nothing again. ``tenant_scope`` None: a global
    administrator (any tenant); another tenant's object is a 404 like a made-up id."""
    with ctx.db.write() as session:
        target = _target(session, ctx, who, kind, object_id, tenant_scope, "drain")
        already = target.drained_at is not None
        if not already:
            target.drained_at = utcnow()
        desktops = drain_rows.affected_desktops(session, target)
        in_progress = drain_rows.open_sessions(session, [d.id for d in desktops])
        sent = 0
        if message and not already:
            by_id = {d.id: d for d in desktops}
            for row in in_progress:
                desktop = by_id[row.desktop_id]
                if desktop.agent_state == AgentState.UNKNOWN.value:
                    continue  # no agent has ever reported from it: nobody to tell
                agents.queue_action(
                    session,
                    desktop,
                    "message",
                    session_id=row.id,
                    session_key=row.session_key,
                    message=message,
                    actor=who.username,
                )
                sent += 1
        if not already:
            events.append(
                session,
                "admin.drain",
                tenant_id=target.tenant_id,
                actor=who.username,
                user_id=who.user_id,
                **_event_ids(target),
                detail={"kind": kind, "id": target.id, "name": target.name, "messages": sent}
                | ({"message": message} if message else {}),
            )
        words = (
            f"{kind} {target.name} {'was already' if already else 'is'} drained: no login "
            f"gets {'it' if kind == 'desktop' else 'a desktop of it'}; "
            f"{len(in_progress)} sessions in progress go on"
        )
        if sent:
            words += f"; {sent} users told through their desktops' agents"
        return DrainOutcome(
            kind,
            target.id,
            target.name,
            target.drained_at,
            len(desktops),
            len(in_progress),
            sent,
            words,
        )


def undrain(
    ctx: BrokerContext, who: TokenClaims, kind: DrainKind, object_id: str, tenant_scope: str | None
) -> DrainOutcome:
    """Put ``kind`` ``object_id`` back in the claim and serve the users who queued."""
    with ctx.db.write() as session:
        target = _target(session, ctx, who, kind, object_id, tenant_scope, "undrain")
        was = target.drained_at is not None
        target.drained_at = None
        served = 0
        if was:
            events.append(
                session,
                "admin.undrain",
                tenant_id=target.tenant_id,
                actor=who.username,
                user_id=who.user_id,
                **_event_ids(target),
                detail={"kind": kind, "id": target.id, "name": target.name},
            )
            session.flush()
            served = serve_queues(session, target.tenant_id)
        desktops = drain_rows.affected_desktops(session, target)
        in_progress = drain_rows.open_sessions(session, [d.id for d in desktops])
        words = f"{kind} {target.name} {'is back in' if was else 'was not out of'} the claim"
        if served:
            words += f"; {served} waiting users got a desktop"
        return DrainOutcome(
            kind, target.id, target.name, None, len(desktops), len(in_progress), 0, words
        )


__all__ = ["DrainKind", "DrainOutcome", "drain", "undrain"]

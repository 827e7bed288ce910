"""What a helpdesk does to running desktops and sessions beyond powering them
(``services.power``): a message, a lock or a log-off sent to a session through its
desktop's agent, and ending a session its agent can no longer report."""

from __future__ import annotations

from dataclasses import dataclass

from deskbroker.centers.base import PowerAction
from deskbroker.domain.plans import AgentEvent
from deskbroker.domain.states import SessionState
from deskbroker.errors import Conflict
from deskbroker.security import TokenClaims
from deskbroker.services import agents, standing, write_context
from deskbroker.services import sessions as session_service
from deskbroker.services.context import BrokerContext
from deskbroker.store import events
from deskbroker.store.repository import Repository
from deskbroker.store.tables import Desktop, SessionRow


@dataclass(frozen=True)
class SessionEnded:
    session_id: str
    state: str
    was: str


def end_session(
    ctx: BrokerContext, who: TokenClaims, session_id: str, tenant_id: str | None, reason: str
) -> SessionEnded:
    """End a session as if its agent had reported the logout (the release and power
    plans follow), and keep who did it and why in the audit log. ``tenant_id`` None:
    any tenant's session (a global administrator)."""
    with ctx.db.read() as session:
        row = Repository(SessionRow, "session").get(session, session_id, tenant_id)
        write_context.attach_actor(session, ctx, who)
        standing.check_people_on(session, row.desktop_id, "end the session on a desktop of")
        desktop_id, username, key, state, owner = (
            row.desktop_id,
            row.username,
            row.session_key,
            row.state,
            row.tenant_id,
        )
    if state == SessionState.LOGGED_OUT.value:
        raise Conflict(f"session {session_id} of {username} has already ended")
    outcome = session_service.record(
        ctx, desktop_id, AgentEvent.LOGOUT, user=username, session_key=key or None
    )
    with ctx.db.write() as session:
        events.append(
            session,
            "admin.session_end",
            tenant_id=owner,
            actor=who.username,
            user_id=who.user_id,
            desktop_id=desktop_id,
            detail={"session": session_id, "user": username, "reason": reason},
        )
    return SessionEnded(session_id=outcome.session_id, state=outcome.state, was=state)


@dataclass(frozen=True)
class SessionOrder:
    """An order queued for a session's agent; it pulls it with its next heartbeat."""

    action_id: str
    session_id: str
    kind: str
    desktop_id: str
    desktop_name: str
    username: str
    agent_state: str
    message: str


# What each order does, in the words the answer gives back.
_ORDER_WORDS = {
    "message": "the message is shown",
    "lock": "the session is locked",
    "logoff": "the user is logged off",
}


# The order as the refusal words it ("you cannot lock the session on a desktop of ...").
_ORDER_VERBS = {
    "message": "send a message to the session on",
    "lock": "lock the session on",
    "logoff": "log off the session on",
}


def order_session(
    ctx: BrokerContext,
    who: TokenClaims,
    session_id: str,
    tenant_id: str | None,
    kind: str,
    message: str = "",
) -> SessionOrder:
    """Queue ``kind`` (message, lock, logoff) for the session's agent, with an audit
    event. The agent carries it out when it next pulls its actions (a heartbeat) and
    reports the outcome; a log-off then ends the session as the agent reports it.
    ``tenant_id`` None: any tenant's session (a global administrator)."""
    with ctx.db.write() as session:
        row = Repository(SessionRow, "session").get(session, session_id, tenant_id)
        if row.state == SessionState.LOGGED_OUT.value:
            raise Conflict(f"session {session_id} of {row.username} has already ended")
        desktop = session.get(Desktop, row.desktop_id)
        if desktop is None:  # pragma: no cover - a session row cascades with its desktop
            raise Conflict(f"session {session_id} has no desktop")
        write_context.attach_actor(session, ctx, who)
        standing.check_people_on(session, desktop.id, f"{_ORDER_VERBS[kind]} a desktop of")
        action = agents.queue_action(
            session,
            desktop,
            kind,
            session_id=row.id,
            session_key=row.session_key,
            message=message,
            actor=who.username,
        )
        events.append(
            session,
            f"admin.session_{kind}",
            tenant_id=row.tenant_id,
            actor=who.username,
            user_id=who.user_id,
            desktop_id=desktop.id,
            detail={"session": row.id, "user": row.username, "action": action.id}
            | ({"message": message} if message else {}),
        )
        agent_state = desktop.agent_state
        words = f"{_ORDER_WORDS[kind]} when the agent of {desktop.name} next checks in"
        if agent_state != "running":
            words += f" (its agent is {agent_state} now: the order waits for it)"
        return SessionOrder(
            action_id=action.id,
            session_id=row.id,
            kind=kind,
            desktop_id=desktop.id,
            desktop_name=desktop.name,
            username=row.username,
            agent_state=agent_state,
            message=words,
        )


__all__ = ["PowerAction", "SessionEnded", "SessionOrder", "end_session", "order_session"]

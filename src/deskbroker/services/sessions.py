"""Sessions as desktop agents report them: the one place a session changes state.

``record`` moves a session through ``SESSION_TRANSITIONS``, sets and cancels plan timers
(``domain.plans.on_session_change``) and appends one event, in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from deskbroker.domain import plans
from deskbroker.domain.plans import AgentEvent, PlanKind, PlanRule
from deskbroker.domain.states import (
    AGENT_TRANSITIONS,
    SESSION_TRANSITIONS,
    AgentState,
    SessionState,
    transition,
)
from deskbroker.domain.timestamps import aware
from deskbroker.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from deskbroker.security import TokenClaims
from deskbroker.services.context import BrokerContext
from deskbroker.store import events
from deskbroker.store.tables import Desktop, PowerPlan, ReleasePlan, SessionRow, Timer, User

# How far ahead of the broker's clock an event's time is taken as reported.
CLOCK_SKEW = timedelta(seconds=60)


@dataclass(frozen=True)
class TimerInfo:
    id: str
    plan: str
    trigger: str
    action: str
    due_at: datetime


@dataclass(frozen=True)
class SessionOutcome:
    """What an agent event did."""

    session_id: str
    desktop_id: str
    username: str
    user_id: str | None
    state: str
    previous: str | None
    changed: bool
    scheduled: tuple[TimerInfo, ...]
    cancelled: int


def bare_username(name: str) -> str:
    """``DOMAIN\\alice``, ``alice@corp.example`` and ``Alice`` all name ``alice``."""
    return name.rsplit("\\", 1)[-1].split("@", 1)[0].strip().lower()


def _user_id(session: Session, desktop: Desktop, username: str) -> str | None:
    """The broker user behind a desktop account, when that is unambiguous."""
    bare = bare_username(username)
    if desktop.assigned_user_id is not None:
        holder = session.get(User, desktop.assigned_user_id)
        if holder is not None and bare_username(holder.username) == bare:
            return holder.id
    found = session.scalars(
        select(User.id)
        .where(
            User.tenant_id == desktop.tenant_id,
            func.lower(User.username).in_({username.lower(), bare}),
        )
        .limit(2)
    ).all()
    return found[0] if len(found) == 1 else None


def _open_session(
    session: Session, desktop_id: str, username: str, key: str | None, event: AgentEvent
) -> SessionRow | None:
    query = select(SessionRow).where(
        SessionRow.desktop_id == desktop_id, SessionRow.ended_at.is_(None)
    )
    if key:
        query = query.where(SessionRow.session_key == key)
    else:
        query = query.where(func.lower(SessionRow.username) == username.lower())
        if event is AgentEvent.LOGIN:
            # Without a key only a repeated report of the same login is the same session;
            # a login after a disconnect is a new session (the old one lingers).
            query = query.where(SessionRow.state == SessionState.LOGGED_IN.value)
    return session.scalars(query.order_by(SessionRow.started_at.desc()).limit(1)).first()


def _within_clock_window(at: datetime | None, now: datetime, window_s: int) -> datetime:
    """``at`` as reported, refused when it lies too far from the broker's clock.

    A token holder could otherwise backdate events (a disconnect "hours ago" fires the
    plans at once) or date them far ahead."""
    if at is None:
        return now
    at = aware(at)
    off = (at - now).total_seconds()
    if abs(off) > window_s:
        direction = "behind" if off < 0 else "ahead of"
        raise InvalidInput(
            f"at ({at.isoformat()}) is {_duration_words(abs(off))} {direction} the broker's "
            f"clock; an event must be reported within {_duration_words(window_s)} of when "
            "it happened (check the desktop's clock)",
            field="at",
        )
    return at


def _duration_words(seconds: float) -> str:
    if seconds < 120:
        return f"{round(seconds)} seconds"
    if seconds < 7200:
        return f"{round(seconds / 60)} minutes"
    return f"{round(seconds / 3600)} hours"


def _room_for_session(session: Session, desktop: Desktop, user: str) -> None:
    """Refuse a login beyond the sessions the desktop's kind allows (one on a single-user
    desktop): one desktop's token must not fill the tenant's session quota."""
    open_rows = session.execute(
        select(SessionRow.username, SessionRow.session_key, SessionRow.state)
        .where(SessionRow.desktop_id == desktop.id, SessionRow.ended_at.is_(None))
        .order_by(SessionRow.started_at)
        .limit(desktop.max_sessions + 1)
    ).all()
    if len(open_rows) < desktop.max_sessions:
        return
    held = ", ".join(
        f"{r[0]}" + (f" (key {r[1]!r})" if r[1] else "") + f" {r[2]}" for r in open_rows[:3]
    )
    allows = "one session" if desktop.max_sessions == 1 else f"{desktop.max_sessions} sessions"
    raise Conflict(
        f"desktop {desktop.name} allows {allows} at once and has {held} open; "
        f"a login of {user} must follow their logout (an administrator can end a session "
        "the agent missed, or raise the desktop's max_sessions for a multi-session host)",
        max_sessions=desktop.max_sessions,
    )


def _allowed_events(current: SessionState) -> str:
    targets = SESSION_TRANSITIONS[current]
    names = [
        e.value for e in AgentEvent if e is not AgentEvent.LOGIN and plans.EVENT_STATE[e] in targets
    ]
    return ", ".join(names) or "none: the session has ended"


def _rules(session: Session, ctx: BrokerContext, pool_id: str | None) -> list[PlanRule]:
    if pool_id is None:
        return []
    power_id, release_id = ctx.cache.plans_for_pool(ctx.db, pool_id)
    rules: list[PlanRule] = []
    power = session.get(PowerPlan, power_id) if power_id else None
    if power is not None:
        rules.extend(plans.parse_rules(PlanKind.POWER, power.rules or []))
    release = session.get(ReleasePlan, release_id) if release_id else None
    if release is not None:
        rules.extend(plans.parse_rules(PlanKind.RELEASE, release.rules or []))
    return rules


def _pending(session: Session, desktop_id: str) -> list[plans.PendingTimer]:
    rows = session.execute(
        select(Timer.id, Timer.session_id, Timer.plan, Timer.trigger, Timer.action).where(
            Timer.desktop_id == desktop_id
        )
    ).all()
    return [plans.PendingTimer(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def record(
    ctx: BrokerContext,
    desktop_id: str,
    event: AgentEvent,
    *,
    user: str,
    session_key: str | None = None,
    at: datetime | None = None,
    protocol: str = "",
    client_address: str = "",
    now: datetime | None = None,
) -> SessionOutcome:
    """Apply one agent event to the desktop's sessions.

    Raises ``Conflict`` when the event cannot follow the session's state (a lock of a
    disconnected session, anything after a logout) and ``NotFound`` for an unknown
    desktop. A repeated report (the state would not change) changes nothing.
    """
    now = aware(now or datetime.now(UTC))
    at = _within_clock_window(at, now, ctx.settings.agent_clock_window_s)
    # Within the window, an agent whose clock runs ahead must not set timers in the
    # future of the broker's.
    at = min(at, now + CLOCK_SKEW)
    # Warm the per-node config cache outside the write transaction.
    ctx.cache.current(ctx.db)
    with ctx.db.write() as session:
        desktop = session.scalars(
            select(Desktop).where(Desktop.id == desktop_id).with_for_update()
        ).first()
        if desktop is None:
            raise NotFound(f"desktop {desktop_id} does not exist")
        # Any report shows the agent alive.
        desktop.agent_state = transition(
            AGENT_TRANSITIONS, AgentState(desktop.agent_state), AgentState.RUNNING
        ).value
        row = _open_session(session, desktop.id, user, session_key, event)
        target = plans.EVENT_STATE[event]
        previous: SessionState | None
        if row is None:
            if event is not AgentEvent.LOGIN:
                raise Conflict(
                    f"{user} has no open session on desktop {desktop.name}"
                    + (f" with key {session_key!r}" if session_key else "")
                    + f"; a {event.value} must follow a login"
                )
            _room_for_session(session, desktop, user)
            row = SessionRow(
                tenant_id=desktop.tenant_id,
                desktop_id=desktop.id,
                user_id=_user_id(session, desktop, user),
                username=user,
                session_key=session_key or "",
                state=target.value,
                protocol=protocol,
                client_address=client_address,
                started_at=at,
            )
            session.add(row)
            session.flush()
            previous = None
        else:
            previous = SessionState(row.state)
            try:
                transition(SESSION_TRANSITIONS, previous, target)
            except Conflict as exc:
                raise Conflict(
                    f"{user}'s session on desktop {desktop.name} is {previous.value}; "
                    f"a {event.value} cannot follow it (possible next events: "
                    f"{_allowed_events(previous)})",
                    session_id=row.id,
                    state=previous.value,
                ) from exc
            if previous == target:
                return SessionOutcome(
                    row.id,
                    desktop.id,
                    row.username,
                    row.user_id,
                    target.value,
                    previous.value,
                    False,
                    (),
                    0,
                )
            row.state = transition(SESSION_TRANSITIONS, previous, target).value
            if protocol:
                row.protocol = protocol
            if client_address:
                row.client_address = client_address
            if target is SessionState.LOGGED_OUT:
                row.ended_at = at
        desktop.last_used_at = at
        changes = plans.on_session_change(
            session_id=row.id,
            previous=previous,
            new=target,
            at=at,
            rules=_rules(session, ctx, desktop.assigned_pool_id),
            pending=_pending(session, desktop.id),
        )
        if changes.cancel:
            session.execute(delete(Timer).where(Timer.id.in_(changes.cancel)))
        timers = [
            Timer(
                tenant_id=desktop.tenant_id,
                desktop_id=desktop.id,
                session_id=row.id,
                plan=t.plan.value,
                trigger=t.trigger.value,
                action=t.action.value,
                due_at=t.due_at,
            )
            for t in changes.add
        ]
        session.add_all(timers)
        session.flush()
        scheduled = tuple(
            TimerInfo(t.id, t.plan, t.trigger, t.action, aware(t.due_at)) for t in timers
        )
        events.append(
            session,
            f"session.{event.value}",
            tenant_id=desktop.tenant_id,
            actor=f"agent@{desktop.name}",
            user_id=row.user_id,
            desktop_id=desktop.id,
            pool_id=desktop.assigned_pool_id,
            detail={
                "session_id": row.id,
                "user": user,
                "state": target.value,
                "previous": previous.value if previous else None,
                "at": at.isoformat(),
                "timers": [
                    {"id": t.id, "action": t.action, "due_at": t.due_at.isoformat()}
                    for t in scheduled
                ],
                "cancelled": len(changes.cancel),
            },
        )
        return SessionOutcome(
            row.id,
            desktop.id,
            row.username,
            row.user_id,
            target.value,
            previous.value if previous else None,
            True,
            scheduled,
            len(changes.cancel),
        )


# --- agent tokens ---------------------------------------------------------------------
def issue_agent_token(
    ctx: BrokerContext, desktop_id: str, tenant_scope: str | None, actor: str
) -> tuple[str, int, Desktop]:
    """Mint the desktop's agent token; any earlier token of the desktop stops working."""
    with ctx.db.write() as session:
        desktop = session.get(Desktop, desktop_id)
        if desktop is None or (tenant_scope is not None and desktop.tenant_id != tenant_scope):
            raise NotFound(f"desktop {desktop_id} does not exist")
        token, expires, token_id = ctx.signer.issue_agent(
            desktop_id=desktop.id,
            tenant_id=desktop.tenant_id,
            desktop_name=desktop.name,
            ttl_s=ctx.settings.agent_token_ttl_s,
        )
        desktop.agent_token_id = token_id
        events.append(
            session,
            "agent.token",
            tenant_id=desktop.tenant_id,
            actor=actor,
            desktop_id=desktop.id,
            detail={"expires_at": expires},
        )
    return token, expires, desktop


def check_agent(ctx: BrokerContext, who: TokenClaims, desktop_id: str | None) -> str:
    """The desktop an agent token may report for; refuses replaced or foreign tokens."""
    assert who.desktop_id is not None
    if desktop_id is not None and desktop_id != who.desktop_id:
        raise Forbidden(f"this agent token belongs to desktop {who.desktop_id}, not {desktop_id}")
    with ctx.db.read() as session:
        row = session.execute(
            select(Desktop.tenant_id, Desktop.agent_token_id).where(Desktop.id == who.desktop_id)
        ).first()
    if row is None or row[0] != who.tenant_id:
        raise Unauthorized("the desktop this agent token was minted for no longer exists")
    if row[1] is None:
        raise Unauthorized(
            "this agent token was revoked when the desktop was released (it changed "
            "hands); an administrator mints a new one for the desktop's agent"
        )
    if row[1] != who.token_id:
        raise Unauthorized(
            "this agent token was replaced by a newer one; install the new token on the desktop"
        )
    return who.desktop_id

"""Sessions as desktop agents report them: the one place a session changes state.

``record`` moves a session through ``SESSION_TRANSITIONS``, sets and cancels plan timers
(``domain.plans.on_session_change``) and appends one event, in one transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from deskbroker.domain import plans
from deskbroker.domain.offers import AssignmentKind
from deskbroker.domain.plans import AgentEvent, PlanKind, PlanRule
from deskbroker.domain.states import (
    AGENT_TRANSITIONS,
    AVAILABILITY_TRANSITIONS,
    SESSION_TRANSITIONS,
    AgentState,
    Availability,
    SessionState,
    transition,
)
from deskbroker.domain.timestamps import aware
from deskbroker.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from deskbroker.security import TokenClaims
from deskbroker.services import standing
from deskbroker.services.context import BrokerContext
from deskbroker.store import claims, desktop_rows, events
from deskbroker.store import sessions as rows
from deskbroker.store import standing as standing_reads
from deskbroker.store.db import Unit as Session
from deskbroker.store.tables import Desktop, SessionRow, Timer, User

log = logging.getLogger("deskbroker.sessions")

# How far ahead of the broker's clock an event's time is taken as reported.
CLOCK_SKEW = timedelta(seconds=60)
# How far one event's sequence number may pass the last one taken: the agent numbers one
# by one, so a greater jump is a token holder trying to blind the broker to what follows.
SEQ_JUMP_MAX = 1_000_000


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
    # Why the event was not applied (a replay or a late event), empty when it was.
    ignored: str = ""


def bare_username(name: str) -> str:
    """``DOMAIN\\alice``, ``alice@corp.example`` and ``Alice`` all name ``alice``."""
    return name.rsplit("\\", 1)[-1].split("@", 1)[0].strip().lower()


def _user_id(
    session: Session, desktop: Desktop, holder_name: str | None, username: str
) -> str | None:
    """The broker user behind a desktop account, when that is unambiguous."""
    bare = bare_username(username)
    if (
        desktop.assigned_user_id is not None
        and holder_name is not None
        and bare_username(holder_name) == bare
    ):
        return desktop.assigned_user_id
    found = rows.users_named(session, desktop.tenant_id, {username.lower(), bare})
    return found[0] if len(found) == 1 else None


def _open_session(
    session: Session, desktop: Desktop, username: str, key: str | None, event: AgentEvent
) -> tuple[SessionRow | None, list[SessionRow]]:
    """The open session this event is about, and the desktop's open sessions (as many as
    a login's room check needs)."""
    login = event is AgentEvent.LOGIN
    # Without a key only a repeated report of the same login is the same session;
    # a login after a disconnect is a new session (the old one lingers).
    return rows.open_sessions(
        session,
        desktop.id,
        username,
        key,
        only_logged_in=login,
        limit=desktop.max_sessions + 1 if login else 1,
    )


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


def _room_for_session(desktop: Desktop, open_rows: list[SessionRow], user: str) -> None:
    """Refuse a login beyond the sessions the desktop's kind allows (one on a single-user
    desktop): one desktop's token must not fill the tenant's session quota.
    ``open_rows``: the desktop's open sessions, at least ``max_sessions`` of them if it
    has that many."""
    if len(open_rows) < desktop.max_sessions:
        return
    oldest = sorted(open_rows, key=lambda r: r.started_at)[:3]
    held = ", ".join(
        f"{r.username}" + (f" (key {r.session_key!r})" if r.session_key else "") + f" {r.state}"
        for r in oldest
    )
    allows = "one session" if desktop.max_sessions == 1 else f"{desktop.max_sessions} sessions"
    raise Conflict(
        f"desktop {desktop.name} allows {allows} at once and has {held} open; "
        f"a login of {user} must follow their logout (an administrator can end a session "
        "the agent missed, or raise the desktop's max_sessions for a multi-session host)",
        max_sessions=desktop.max_sessions,
    )


def _rogue_refusal(
    session: Session, ctx: BrokerContext, desktop: Desktop, user: User | None
) -> str | None:
    """Why a rogue login must not make ``user`` the desktop's holder, None when it may:
    the account is disabled, or more than a plain user (``standing.rogue_refusal``), or
    holds what a policy offering the desktop's pools allows already (its
    ``max_desktops_per_user``, or its entry's ``desktops`` of that pool; the strictest
    wins, as for ``rogue_users``). The entry's ``rogue_users: assign`` is the offer
    itself: the user's own sign-in rules need not name the pool."""
    if user is None or user.disabled:
        name = user.username if user is not None else "the account"
        return f"{name} is disabled in the broker: a rogue login assigns it nothing"
    staff = standing.rogue_refusal(session, user)
    if staff is not None:
        return staff
    pools = standing_reads.pools_holding(session, [desktop.id])
    held = claims.held_desktops(session, user.id)
    for policy, entry in ctx.cache.current(ctx.db).offers_of(pools):
        offered = {entry.pool_id, entry.backup_pool_id}
        mine = sum(1 for d in held if d.pool_id in offered)
        if len(held) >= policy.max_desktops_per_user or mine >= entry.desktops:
            return (
                f"{user.username} holds {len(held)} desktops ({mine} of pool "
                f"{entry.pool_name}), what policy {policy.name} allows"
            )
    return None


def _rogue(session: Session, ctx: BrokerContext, desktop: Desktop, row: SessionRow) -> None:
    """A login the broker did not hand out: recorded, and per the ``rogue_users`` of the
    policies offering the desktop's pool (else the broker's setting) the desktop is
    assigned to the user (when it is free, the account an enabled plain broker user, and
    within the limits of the policies offering the pool: else ``refused``, the reason kept
    in the event) or flagged (taken out of every offer)."""
    policy = plans.rogue_policy(
        rows.rogue_settings(session, desktop.id), ctx.settings.rogue_users
    ).value
    holder = desktop.assigned_user_id
    outcome = "recorded"
    refused = None
    if policy == "assign" and holder is None and row.user_id is not None:
        # The agent's token is any tenant administrator's to mint (and a past holder's
        # word while they held it): it never hands a stronger or disabled account a
        # desktop, nor anyone more desktops than the pool's policies allow.
        refused = _rogue_refusal(session, ctx, desktop, session.get(User, row.user_id))
    if refused is not None:
        outcome = "refused"
    elif policy == "assign" and holder is None and row.user_id is not None:
        pool_id = rows.first_pool_of(session, desktop.id)
        # The assignment is one statement on the row: what this event changed so far is
        # written first, so that reading the row back keeps it.
        session.flush()
        if claims.assign(
            session, desktop_id=desktop.id, user_id=row.user_id, pool_id=pool_id, kind="persistent"
        ):
            session.refresh(desktop)
            outcome = "assigned"
            events.append(
                session,
                "assign",
                tenant_id=desktop.tenant_id,
                actor=f"agent@{desktop.name}",
                user_id=row.user_id,
                desktop_id=desktop.id,
                pool_id=pool_id,
                detail={"reason": "rogue login"},
            )
    elif policy == "flag":
        # Out by this flag, which is the administrator's to lift: a terminate timer that
        # had taken it out must not put it back.
        rows.disown_take_out(session, desktop.id)
        desktop.availability = transition(
            AVAILABILITY_TRANSITIONS,
            Availability(desktop.availability),
            Availability.UNAVAILABLE,
            subject=f"desktop {desktop.name}",
        ).value
        outcome = "flagged"
    events.append(
        session,
        "session.rogue",
        tenant_id=desktop.tenant_id,
        actor=f"agent@{desktop.name}",
        user_id=row.user_id,
        desktop_id=desktop.id,
        pool_id=desktop.assigned_pool_id,
        detail={
            "session_id": row.id,
            "user": row.username,
            "holder_id": holder,
            "outcome": outcome,
        }
        | ({"refused": refused} if refused else {}),
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
    power, release = rows.plan_rules(session, power_id, release_id)
    return [
        *plans.parse_rules(PlanKind.POWER, power),
        *plans.parse_rules(PlanKind.RELEASE, release),
    ]


def _pending(session: Session, desktop_id: str) -> list[plans.PendingTimer]:
    return [plans.PendingTimer(*r) for r in rows.timers_of(session, desktop_id)]


def _session_detail(
    session_id: str,
    user: str,
    previous: SessionState | None,
    at: datetime,
    now: datetime,
    scheduled: tuple[TimerInfo, ...],
    cancelled: int,
    seq: int | None,
    key: str | None,
) -> dict[str, object]:
    """A session event's detail, only what the event's own columns do not say: two such
    events come with every login and logout, and the event log is most of what a login
    adds to the database. The new state is the event's kind; ``at`` appears when the
    agent reported a time off the event's own (a queued event, a slow clock); timers,
    cancellations, ``seq`` and ``key`` when there are any."""
    detail: dict[str, object] = {"session_id": session_id, "user": user}
    if previous is not None:
        detail["previous"] = previous.value
    if abs((at - now).total_seconds()) >= 1:
        detail["at"] = at.isoformat()
    if scheduled:
        detail["timers"] = [
            {"id": t.id, "action": t.action, "due_at": t.due_at.isoformat()} for t in scheduled
        ]
    if cancelled:
        detail["cancelled"] = cancelled
    if seq is not None:
        detail["seq"] = seq
    if key is not None:
        detail["key"] = key
    return detail


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
    seq: int | None = None,
    now: datetime | None = None,
    key: str | None = None,
    agent: TokenClaims | None = None,
) -> SessionOutcome:
    """Apply one agent event to the desktop's sessions.

    Raises ``Conflict`` when the event cannot follow the session's state (a lock of a
    disconnected session, anything after a logout) and ``NotFound`` for an unknown
    desktop. A repeated report (the state would not change) changes nothing.

    ``seq`` is the agent's sequence number of the event: one not above the highest
    taken from the desktop is a replay (its answer was lost) or arrived late, and is
    ignored (logged, reported in ``ignored``), never applied out of order. ``key``, the
    event's idempotency key, is kept in the event log with ``seq``, so that what an
    agent queued can be found there exactly once.

    ``agent``, the claims of the agent token that reported the event, is checked against
    the locked desktop row (``check_agent_token``) in the same transaction: the check
    costs no round trip of its own, and no token replaced before the lock passes.
    """
    now = aware(now or datetime.now(UTC))
    at = _within_clock_window(at, now, ctx.settings.agent_clock_window_s)
    # Within the window, an agent whose clock runs ahead must not set timers in the
    # future of the broker's.
    at = min(at, now + CLOCK_SKEW)
    # Warm the per-node config cache outside the write transaction.
    ctx.cache.current(ctx.db)
    with ctx.db.write() as session:
        locked = rows.lock_desktop_for_event(session, desktop_id)
        if agent is not None:
            check_agent_token(
                agent, (locked[0].tenant_id, locked[0].agent_token_id) if locked else None
            )
        if locked is None:
            raise NotFound(f"desktop {desktop_id} does not exist")
        desktop, holder_name = locked
        # Any report shows the agent alive.
        running = transition(
            AGENT_TRANSITIONS, AgentState(desktop.agent_state), AgentState.RUNNING
        ).value

        def seen(*, taken: bool) -> None:
            # Assigned with the event's other changes to the row, just before they are
            # written: assigned first, the flushes in between (the session's insert, the
            # reads of sessions and timers) would update the desktop's row twice.
            desktop.agent_state = running
            desktop.agent_seen_at = now
            if taken and seq is not None:
                desktop.agent_seq = seq

        if seq is not None and desktop.agent_seq and seq - desktop.agent_seq > SEQ_JUMP_MAX:
            raise InvalidInput(
                f"event {seq} jumps more than {SEQ_JUMP_MAX} past event {desktop.agent_seq}, "
                f"the last one taken from desktop {desktop.name}: an agent numbers its "
                "events one by one",
                field="seq",
            )
        if seq is not None and seq <= desktop.agent_seq:
            why = (
                f"event {seq} ({event.value} of {user}) is not after event "
                f"{desktop.agent_seq}, the last one taken from desktop {desktop.name}: "
                "a replay or a late arrival, ignored"
            )
            log.info("%s", why)
            seen(taken=False)
            return SessionOutcome("", desktop.id, user, None, "", None, False, (), 0, ignored=why)
        row, open_rows = _open_session(session, desktop, user, session_key, event)
        target = plans.EVENT_STATE[event]
        previous: SessionState | None
        if row is None:
            if event is not AgentEvent.LOGIN:
                raise Conflict(
                    f"{user} has no open session on desktop {desktop.name}"
                    + (f" with key {session_key!r}" if session_key else "")
                    + f"; a {event.value} must follow a login"
                )
            _room_for_session(desktop, open_rows, user)
            row = SessionRow(
                tenant_id=desktop.tenant_id,
                desktop_id=desktop.id,
                user_id=_user_id(session, desktop, holder_name, user),
                username=user,
                session_key=session_key or "",
                state=target.value,
                protocol=protocol,
                client_address=client_address,
                started_at=at,
            )
            rows.add(session, [row])
            previous = None
            if row.user_id is None or row.user_id != desktop.assigned_user_id:
                _rogue(session, ctx, desktop, row)
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
                seen(taken=True)
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
        changes = plans.on_session_change(
            session_id=row.id,
            previous=previous,
            new=target,
            at=at,
            rules=plans.with_pooled_release(
                _rules(session, ctx, desktop.assigned_pool_id),
                desktop.assignment_kind == AssignmentKind.POOLED,
            ),
            pending=_pending(session, desktop.id),
        )
        if rows.delete_timers(session, changes.cancel):
            # A terminate timer this event cancels had taken the desktop out of the
            # claim, and with the timer gone no engine run would put it back (its node
            # may have died before the call).
            desktop_rows.back_in_claim(desktop)
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
        rows.add(session, timers)
        seen(taken=True)
        desktop.last_used_at = at
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
            detail=_session_detail(
                row.id, user, previous, at, now, scheduled, len(changes.cancel), seq, key
            ),
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
    """Mint the desktop's agent token; any earlier token of the desktop stops working,
    and so does the enrolled agent's refresh secret (which a past holder may have read
    on the machine), and the event sequence starts again."""
    with ctx.db.write() as session:
        # Found within the caller's tenant as it is locked: a tenant administrator naming
        # another tenant's desktop neither locks its row nor waits for it.
        desktop = desktop_rows.lock(session, desktop_id, tenant_scope)
        if desktop is None:
            raise NotFound(f"desktop {desktop_id} does not exist")
        token, expires, token_id = ctx.signer.issue_agent(
            desktop_id=desktop.id,
            tenant_id=desktop.tenant_id,
            desktop_name=desktop.name,
            ttl_s=ctx.settings.agent_token_ttl_s,
        )
        desktop.agent_token_id = token_id
        desktop.agent_refresh_hash = None
        desktop.agent_seq = 0
        events.append(
            session,
            "agent.token",
            tenant_id=desktop.tenant_id,
            actor=actor,
            desktop_id=desktop.id,
            detail={"expires_at": expires},
        )
    return token, expires, desktop


def agent_desktop(who: TokenClaims, desktop_id: str | None) -> str:
    """The desktop an agent token names; refuses a request about another desktop."""
    assert who.desktop_id is not None
    if desktop_id is not None and desktop_id != who.desktop_id:
        raise Forbidden(f"this agent token belongs to desktop {who.desktop_id}, not {desktop_id}")
    return who.desktop_id


def check_agent_token(who: TokenClaims, row: tuple[str, str | None] | None) -> None:
    """Refuses an agent token whose desktop (``row``: its tenant and accepted token id,
    None when it is gone) no longer accepts it: deleted, released, or a newer token."""
    if row is None or row[0] != who.tenant_id:
        raise Unauthorized("the desktop this agent token was minted for no longer exists")
    if row[1] is None:
        raise Unauthorized(
            "this agent token was revoked when the desktop was released (it changed "
            "hands); the agent gets a new one with its refresh secret within a few "
            "minutes of the release, else it enrols again or an administrator mints one"
        )
    if row[1] != who.token_id:
        raise Unauthorized(
            "this agent token was replaced by a newer one; install the new token on the desktop"
        )


def check_agent(ctx: BrokerContext, who: TokenClaims, desktop_id: str | None) -> str:
    """The desktop an agent token may report for; refuses replaced or foreign tokens."""
    desktop_id = agent_desktop(who, desktop_id)
    with ctx.db.read() as session:
        check_agent_token(who, rows.token_of(session, desktop_id))
    return desktop_id

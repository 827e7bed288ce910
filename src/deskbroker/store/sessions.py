"""Sessions, their plan timers and the desktops' agents: the SQL of the session service."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, and_, bindparam, case, delete, func, select, update
from sqlalchemy.orm import Session

from deskbroker.domain.states import AgentState, SessionState
from deskbroker.store.tables import (
    AgentAction,
    Center,
    Desktop,
    PolicyEntry,
    PoolMember,
    PowerPlan,
    ReleasePlan,
    SessionRow,
    Timer,
    User,
)

# The agent-event path's statements are built once, with bound parameters: building a
# statement and its cache key on every event cost more CPU than the database's answer.
_LOCK_DESKTOP = select(Desktop).where(Desktop.id == bindparam("desktop_id")).with_for_update()


def lock_desktop(session: Session, desktop_id: str) -> Desktop | None:
    """The desktop row, locked until the end of the write (one event at a time per desktop)."""
    return session.scalars(_LOCK_DESKTOP, {"desktop_id": desktop_id}).first()


def refresh_hash(session: Session, desktop_id: str) -> str | None:
    """The hash of the desktop's agent refresh secret, read without a lock."""
    return session.scalar(select(Desktop.agent_refresh_hash).where(Desktop.id == desktop_id))


def user_named(session: Session, user_id: str) -> User | None:
    return session.get(User, user_id)


# The holder's name, read in the statement that locks the desktop: an agent's login of
# the holder (nearly every login) needs it and costs no statement of its own. After a
# wait for the lock PostgreSQL reads it for the holder the row has now, with the
# statement's older snapshot of ``users``: a holder made since reads as no name, and
# the caller looks the name up as it does for anyone else.
_HOLDER_NAME = (
    select(User.username)
    .where(User.id == Desktop.assigned_user_id)
    .correlate(Desktop)
    .scalar_subquery()
)
_LOCK_FOR_EVENT = (
    select(Desktop, _HOLDER_NAME)
    .where(Desktop.id == bindparam("desktop_id"))
    .with_for_update(of=Desktop)
)


def lock_desktop_for_event(session: Session, desktop_id: str) -> tuple[Desktop, str | None] | None:
    """``lock_desktop`` and the name of the desktop's holder (None when it has none)."""
    found = session.execute(_LOCK_FOR_EVENT, {"desktop_id": desktop_id}).first()
    return None if found is None else (found[0], found[1])


def users_named(session: Session, tenant_id: str, names: Iterable[str]) -> Sequence[str]:
    """Ids of the tenant's users whose name (folded) is one of ``names``; at most two."""
    return session.scalars(
        select(User.id)
        .where(User.tenant_id == tenant_id, func.lower(User.username).in_(set(names)))
        .limit(2)
    ).all()


def open_sessions(
    session: Session,
    desktop_id: str,
    username: str,
    key: str | None,
    only_logged_in: bool,
    limit: int,
) -> tuple[SessionRow | None, list[SessionRow]]:
    """The newest open session of the desktop with ``key`` (else of ``username``), and
    up to ``limit`` of the desktop's open sessions (the match among them), in one read:
    a login needs both, the match to repeat and the others to count room."""
    params = {
        "desktop_id": desktop_id,
        "match": key if key else username.lower(),
        "limit": max(1, limit),
    }
    found = session.execute(_open_sessions(bool(key), only_logged_in), params).all()
    open_rows = [r[0] for r in found]
    return (open_rows[0] if found and found[0][1] == 0 else None), open_rows


@functools.cache
def _open_sessions(by_key: bool, only_logged_in: bool) -> Any:
    if by_key:
        match = SessionRow.session_key == bindparam("match", type_=String)
    else:
        match = func.lower(SessionRow.username) == bindparam("match", type_=String)
        if only_logged_in:
            match = and_(match, SessionRow.state == SessionState.LOGGED_IN.value)
    rank = case((match, 0), else_=1)
    return (
        select(SessionRow, rank)
        .where(SessionRow.desktop_id == bindparam("desktop_id"), SessionRow.ended_at.is_(None))
        # Matches first, newest first: the first row is the match whenever there is one
        # (its rank says so, as the database compared the names).
        .order_by(rank, SessionRow.started_at.desc())
        .limit(bindparam("limit", type_=Integer))
    )


def plan_rules(
    session: Session, power_id: str | None, release_id: str | None
) -> tuple[list[Any], list[Any]]:
    """The stored rules of a power plan and a release plan (either may be absent)."""
    power = session.get(PowerPlan, power_id) if power_id else None
    release = session.get(ReleasePlan, release_id) if release_id else None
    return (list(power.rules or []) if power else []), (
        list(release.rules or []) if release else []
    )


def timers_of(session: Session, desktop_id: str) -> list[tuple[str, str | None, str, str, str]]:
    """(id, session id, plan, trigger, action) of every timer set on the desktop."""
    rows = session.execute(_TIMERS_OF, {"desktop_id": desktop_id}).all()
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


_TIMERS_OF = select(Timer.id, Timer.session_id, Timer.plan, Timer.trigger, Timer.action).where(
    Timer.desktop_id == bindparam("desktop_id")
)


def delete_timers(session: Session, ids: Sequence[str]) -> bool:
    """Delete these timers; whether one of them had taken its desktop out of the claim
    (``took_out_at``), read from the deleted rows themselves."""
    if not ids:
        return False
    marks = session.scalars(
        delete(Timer).where(Timer.id.in_(ids)).returning(Timer.took_out_at)
    ).all()
    return any(mark is not None for mark in marks)


def disown_take_out(session: Session, desktop_id: str) -> None:
    """The desktop's availability is someone else's now (an administrator set it, or a
    rogue login flagged it): no timer of it may put it back. Locks the desktop's row
    first, as a judge marking a timer does, so the two are ordered."""
    lock_desktop(session, desktop_id)
    session.execute(
        update(Timer)
        .where(Timer.desktop_id == desktop_id, Timer.took_out_at.is_not(None))
        .values(took_out_at=None)
        .execution_options(synchronize_session="fetch")
    )


def add(session: Session, rows: Sequence[Any]) -> None:
    """Insert new rows and give them their ids."""
    session.add_all(rows)
    session.flush()


# --- agents ---------------------------------------------------------------------------
def token_of(session: Session, desktop_id: str) -> tuple[str, str | None] | None:
    """(tenant id, accepted agent token id) of a desktop, None when it does not exist."""
    row = session.execute(
        select(Desktop.tenant_id, Desktop.agent_token_id).where(Desktop.id == desktop_id)
    ).first()
    return (row[0], row[1]) if row is not None else None


def desktop(session: Session, desktop_id: str) -> Desktop | None:
    return session.get(Desktop, desktop_id)


def open_actions(session: Session, desktop_id: str, limit: int = 20) -> list[AgentAction]:
    """Actions the agent has not answered yet, oldest first (sent again until answered)."""
    return list(
        session.scalars(
            select(AgentAction)
            .where(AgentAction.desktop_id == desktop_id, AgentAction.done_at.is_(None))
            .order_by(AgentAction.created_at, AgentAction.id)
            .limit(limit)
        )
    )


def action(session: Session, desktop_id: str, action_id: str) -> AgentAction | None:
    """One of the desktop's actions (another desktop's id finds nothing)."""
    row = session.get(AgentAction, action_id)
    return row if row is not None and row.desktop_id == desktop_id else None


def silent_agents(session: Session, cutoff: datetime, limit: int = 500) -> list[Desktop]:
    """Running agents whose last word is older than ``cutoff``, locked for the write."""
    return list(
        session.scalars(
            select(Desktop)
            .where(
                Desktop.agent_state == AgentState.RUNNING.value,
                Desktop.agent_seen_at.is_not(None),
                Desktop.agent_seen_at < cutoff,
            )
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )


def cancel_actions(session: Session, desktop_id: str, session_id: str, kinds: Sequence[str]) -> int:
    """Drop the session's unanswered actions of ``kinds`` (a warning the user made moot)."""
    done = session.execute(
        update(AgentAction)
        .where(
            AgentAction.desktop_id == desktop_id,
            AgentAction.session_id == session_id,
            AgentAction.kind.in_(kinds),
            AgentAction.delivered_at.is_(None),
        )
        .values(done_at=func.now(), ok=False, detail="cancelled: the session is in use again")
    )
    return int(getattr(done, "rowcount", 0) or 0)


# --- plan timers firing ---------------------------------------------------------------
def session_state(session: Session, session_id: str) -> str | None:
    return session.scalar(select(SessionRow.state).where(SessionRow.id == session_id))


def session_row(session: Session, session_id: str) -> SessionRow | None:
    return session.get(SessionRow, session_id)


def other_open_states(session: Session, desktop_id: str, except_id: str | None) -> list[str]:
    """States of the desktop's open sessions other than ``except_id``."""
    return list(
        session.scalars(
            select(SessionRow.state).where(
                SessionRow.desktop_id == desktop_id,
                SessionRow.ended_at.is_(None),
                SessionRow.id != (except_id or ""),
            )
        )
    )


def timer(session: Session, timer_id: str) -> Timer | None:
    return session.get(Timer, timer_id)


def timer_held(session: Session, timer_id: str, owner: str) -> bool:
    """Whether the timer still exists under ``owner``'s lease, as the database has it now
    (a statement of its own, not the session's copy of the row)."""
    found = session.execute(
        select(Timer.id).where(Timer.id == timer_id, Timer.lease_owner == owner)
    ).first()
    return found is not None


def center_of(session: Session, center_id: str) -> Center | None:
    return session.get(Center, center_id)


def due_of(
    session: Session, desktop_id: str, session_id: str, plan: str, trigger: str
) -> tuple[datetime, str] | None:
    """When the session's first pending non-warning timer of this plan and trigger is
    due, and its action: what a warning announces."""
    row = session.execute(
        select(Timer.due_at, Timer.action)
        .where(
            Timer.desktop_id == desktop_id,
            Timer.session_id == session_id,
            Timer.plan == plan,
            Timer.trigger == trigger,
            Timer.action != "warn",
        )
        .order_by(Timer.due_at)
        .limit(1)
    ).first()
    return None if row is None else (row[0], str(row[1]))


def rogue_settings(session: Session, desktop_id: str) -> list[str | None]:
    """The ``rogue_users`` of every policy entry that offers one of the desktop's pools
    (the desktop's tenant's: pools and policies never cross tenants)."""
    return list(
        session.scalars(
            select(PolicyEntry.rogue_users)
            .join(PoolMember, PoolMember.pool_id == PolicyEntry.pool_id)
            .where(PoolMember.desktop_id == desktop_id)
        ).all()
    )


def first_pool_of(session: Session, desktop_id: str) -> str | None:
    """A pool the desktop belongs to (the one a rogue user's assignment is made in)."""
    return session.scalar(
        select(PoolMember.pool_id)
        .where(PoolMember.desktop_id == desktop_id)
        .order_by(PoolMember.pool_id)
        .limit(1)
    )

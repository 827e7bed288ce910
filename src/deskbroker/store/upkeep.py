"""The statements of the engine's periodic upkeep: what a leak sweep must not call a
leak, a pool's statistics sample, and retention's purge."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select

from deskbroker.domain.provisioning import PoolCounts
from deskbroker.store.db import Unit
from deskbroker.store.tables import (
    AgentAction,
    ApiToken,
    Desktop,
    Event,
    LoginChallenge,
    LoginThrottle,
    OidcFlow,
    PendingEnrolment,
    PoolStat,
    ProvisioningTask,
    SessionRow,
)
from deskbroker.store.tasks import OPEN_STATES


@dataclass(frozen=True)
class Accounted:
    """The instances of a center the broker accounts for (its desktops and its open
    builds), and whether a build is being created (it may own an instance not recorded
    yet, so a sweep now could call it a leak)."""

    external_ids: set[str]
    creating: bool


def accounted(session: Unit, center_id: str) -> Accounted:
    """What the broker knows of the center's instances."""
    known = set(
        session.scalars(select(Desktop.external_id).where(Desktop.center_id == center_id)).all()
    )
    known |= {
        e
        for e in session.scalars(
            select(ProvisioningTask.external_id).where(
                ProvisioningTask.center_id == center_id,
                ProvisioningTask.state.in_(OPEN_STATES),
            )
        ).all()
        if e
    }
    creating = session.scalar(
        select(ProvisioningTask.id)
        .where(ProvisioningTask.center_id == center_id, ProvisioningTask.state == "creating")
        .limit(1)
    )
    return Accounted(known, creating is not None)


def add_pool_stat(session: Unit, pool_id: str, at: datetime, counts: PoolCounts) -> None:
    """One statistics sample of the pool."""
    session.add(
        PoolStat(
            pool_id=pool_id,
            at=at,
            counts={
                "total": counts.total,
                "unassigned": counts.unassigned,
                "in_flight": counts.in_flight,
                "waiting_users": counts.waiting_users,
            },
        )
    )


@dataclass(frozen=True)
class Retention:
    """How long each kind of row is kept."""

    event_days: float
    stats_days: float
    session_days: float
    login_failure_window_s: float


@dataclass(frozen=True)
class Purged:
    """How many rows retention removed, by kind."""

    events: int
    samples: int
    sessions: int
    sign_in_leftovers: int
    failed_builds: int = 0


def purge(session: Unit, now: datetime, keep: Retention) -> Purged:
    """Drop events, statistics and ended sessions older than their retention; finished
    tasks (failed ones with the events), spent sign-in leftovers, old agent orders,
    expired enrolment requests and long-dead API tokens too."""
    old_events = _purge(session, Event, Event.at, now - timedelta(days=keep.event_days))
    old_stats = _purge(session, PoolStat, PoolStat.at, now - timedelta(days=keep.stats_days))
    # Only ended sessions: an open one is live state, however old (a week-long
    # disconnected session still holds its desktop and a unit of the tenant's quota).
    result = session.execute(
        delete(SessionRow).where(
            SessionRow.ended_at.is_not(None),
            SessionRow.ended_at < now - timedelta(days=keep.session_days),
        )
    )
    old_sessions = int(result.rowcount or 0)  # type: ignore[attr-defined]
    session.execute(
        delete(ProvisioningTask).where(
            ProvisioningTask.state.in_(("ready", "cancelled")),
            ProvisioningTask.updated_at < now - timedelta(days=1),
        )
    )
    # A failed build is kept as long as the events (its provision.failed event says the
    # same): listed, and counted in its pool's status, while an administrator may look
    # into it; a pool failing for months would otherwise keep a row per attempt for ever.
    result = session.execute(
        delete(ProvisioningTask).where(
            ProvisioningTask.state == "failed",
            ProvisioningTask.updated_at < now - timedelta(days=keep.event_days),
        )
    )
    failed_builds = int(result.rowcount or 0)  # type: ignore[attr-defined]
    # Sign-in leftovers: challenges and OpenID flows past their expiry, and failure
    # counts whose window and lockout are both over (a spray of made-up names would
    # otherwise leave a row per name for ever).
    spent = _purge(session, LoginChallenge, LoginChallenge.expires_at, now)
    spent += _purge(session, OidcFlow, OidcFlow.expires_at, now)
    window = now - timedelta(seconds=keep.login_failure_window_s)
    result = session.execute(
        delete(LoginThrottle).where(
            LoginThrottle.window_started_at < window,
            or_(LoginThrottle.locked_until.is_(None), LoginThrottle.locked_until < now),
            # A key locked before keeps its count of lockouts for a day: repeats double.
            or_(
                LoginThrottle.lockouts == 0,
                LoginThrottle.window_started_at < now - timedelta(days=1),
            ),
        )
    )
    spent += int(result.rowcount or 0)  # type: ignore[attr-defined]
    # Rows nothing else ever removes: orders to agents (a helpdesk message, a log-off)
    # kept as long as the sessions they were for; agents' enrolment requests once they
    # expired (answered or not: the decision is in the event log); API tokens a while
    # after they expired or were revoked (listed meanwhile, so their holders see why).
    spent += _purge(
        session, AgentAction, AgentAction.created_at, now - timedelta(days=keep.session_days)
    )
    spent += _purge(session, PendingEnrolment, PendingEnrolment.expires_at, now)
    gone = now - timedelta(days=keep.event_days)
    result = session.execute(
        delete(ApiToken).where(or_(ApiToken.expires_at < gone, ApiToken.revoked_at < gone))
    )
    spent += int(result.rowcount or 0)  # type: ignore[attr-defined]
    return Purged(old_events, old_stats, old_sessions, spent, failed_builds)


def _purge(session: Unit, model: type, column: Any, before: datetime) -> int:
    result = session.execute(delete(model).where(column < before))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]

"""Periodic upkeep: center scans, leak sweeps, pool statistics and retention."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from deskbroker.centers.base import Capability
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.provisioner import pool_counts
from deskbroker.services import inventory
from deskbroker.services.context import BrokerContext
from deskbroker.store import events
from deskbroker.store.tables import (
    Center,
    Desktop,
    Event,
    LoginChallenge,
    LoginThrottle,
    OidcFlow,
    Pool,
    PoolStat,
    ProvisioningTask,
    SessionRow,
)
from deskbroker.store.tasks import OPEN_STATES


def scan_center(ctx: BrokerContext, drivers: DriverCache, center_id: str, now: datetime) -> str:
    """The scan job: the center is asked with no transaction open (a center that never
    answers holds this worker, not the database)."""
    report = inventory.scan_center(ctx, center_id, driver_of=drivers.get)
    return "center is gone" if report is None else report.message


def leak_sweep(ctx: BrokerContext, drivers: DriverCache, center_id: str, now: datetime) -> str:
    """Report (and, when the center allows it, remove) instances tagged as ours that
    no desktop or provisioning task accounts for."""
    with ctx.db.read() as session:
        center = session.get(Center, center_id)
        if center is None:
            return "center is gone"
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
        # A task still creating may own an instance we have not recorded yet.
        creating = session.scalar(
            select(ProvisioningTask.id)
            .where(ProvisioningTask.center_id == center_id, ProvisioningTask.state == "creating")
            .limit(1)
        )
    driver = drivers.get(center)
    if Capability.LEAK_SWEEP not in driver.capabilities or creating is not None:
        return "nothing to sweep"
    leaked = driver.leaked(known, center_id=center_id)
    reap = bool((center.params or {}).get("reap_leaks", False))
    for machine in leaked:
        if reap:
            driver.terminate(machine)
    if leaked:
        with ctx.db.write() as session:
            events.append(
                session,
                "leak",
                tenant_id=center.tenant_id,
                actor="engine",
                detail={
                    "center": center.name,
                    "instances": [m.external_id for m in leaked],
                    "removed": reap,
                },
            )
    return f"{len(leaked)} leaked instance(s){' removed' if reap and leaked else ''}"


def pool_stats(ctx: BrokerContext, drivers: DriverCache, pool_id: str, now: datetime) -> str:
    with ctx.db.write() as session:
        pool = session.get(Pool, pool_id)
        if pool is None:
            return "pool is gone"
        counts = pool_counts(session, pool_id)
        session.add(
            PoolStat(
                pool_id=pool_id,
                at=now,
                counts={
                    "total": counts.total,
                    "unassigned": counts.unassigned,
                    "in_flight": counts.in_flight,
                    "waiting_users": counts.waiting_users,
                },
            )
        )
    return "sampled"


def retention(ctx: BrokerContext, drivers: DriverCache, target: str, now: datetime) -> str:
    """Drop events, statistics and ended sessions older than their retention; finished
    tasks and spent sign-in leftovers too."""
    settings = ctx.settings
    with ctx.db.write() as session:
        old_events = _purge(
            session, Event, Event.at, now - timedelta(days=settings.event_retention_days)
        )
        old_stats = _purge(
            session, PoolStat, PoolStat.at, now - timedelta(days=settings.stats_retention_days)
        )
        # Only ended sessions: an open one is live state, however old (a week-long
        # disconnected session still holds its desktop and a unit of the tenant's quota).
        result = session.execute(
            delete(SessionRow).where(
                SessionRow.ended_at.is_not(None),
                SessionRow.ended_at < now - timedelta(days=settings.session_retention_days),
            )
        )
        old_sessions = int(result.rowcount or 0)  # type: ignore[attr-defined]
        session.execute(
            delete(ProvisioningTask).where(
                ProvisioningTask.state.in_(("ready", "cancelled")),
                ProvisioningTask.updated_at < now - timedelta(days=1),
            )
        )
        # Sign-in leftovers: challenges and OpenID flows past their expiry, and failure
        # counts whose window and lockout are both over (a spray of made-up names would
        # otherwise leave a row per name for ever).
        spent = _purge(session, LoginChallenge, LoginChallenge.expires_at, now)
        spent += _purge(session, OidcFlow, OidcFlow.expires_at, now)
        window = now - timedelta(seconds=settings.login_failure_window_s)
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
    return (
        f"removed {old_events} events, {old_stats} samples, {old_sessions} ended sessions "
        f"and {spent} sign-in leftovers"
    )


def _purge(session: Session, model: type, column: Any, before: datetime) -> int:
    result = session.execute(delete(model).where(column < before))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]

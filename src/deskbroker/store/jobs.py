"""Periodic jobs: which exist, and how often they run."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from deskbroker.store.tables import Center, Job, Pool, utcnow


class JobKind(StrEnum):
    SCAN_CENTER = "scan_center"
    LEAK_SWEEP = "leak_sweep"
    POOL_PROVISION = "pool_provision"
    POOL_STATS = "pool_stats"
    RETENTION = "retention"
    AGENT_WATCH = "agent_watch"
    # Terminates the instances of desktops an administrator deleted, and forgets the rows
    # once the center says they are gone (engine/removals.py); poked by each delete.
    REMOVE_DESKTOPS = "remove_desktops"
    WEBHOOKS = "webhooks"
    # Looks the directory users who set up webhooks up again (services/webhook_setters.py).
    WEBHOOK_SETTERS = "webhook_setters"
    POOL_ROLLOUT = "pool_rollout"


@dataclass(frozen=True)
class Intervals:
    """Seconds between runs; a center's scan interval is its own setting."""

    provision_s: float = 5.0
    stats_s: float = 300.0
    retention_s: float = 3600.0
    leak_sweep_s: float = 600.0
    agent_watch_s: float = 30.0
    removal_s: float = 30.0
    webhooks_s: float = 1.0
    webhook_setters_s: float = 900.0


def _existing(session: Session) -> dict[tuple[str, str], tuple[str, float]]:
    """Every job, by kind and target: its id and interval."""
    return {
        (kind, target): (job_id, interval)
        for job_id, kind, target, interval in session.execute(
            select(Job.id, Job.kind, Job.target_id, Job.interval_s)
        ).all()
    }


def _wanted(session: Session, intervals: Intervals) -> dict[tuple[str, str], float]:
    """The jobs the centers and pools need, with their intervals."""
    wanted: dict[tuple[str, str], float] = {
        (JobKind.RETENTION.value, ""): intervals.retention_s,
        (JobKind.AGENT_WATCH.value, ""): intervals.agent_watch_s,
        (JobKind.WEBHOOKS.value, ""): intervals.webhooks_s,
        (JobKind.WEBHOOK_SETTERS.value, ""): intervals.webhook_setters_s,
    }
    for center_id, scan_s in session.execute(select(Center.id, Center.scan_interval_s)).all():
        wanted[(JobKind.SCAN_CENTER.value, center_id)] = float(scan_s)
        wanted[(JobKind.LEAK_SWEEP.value, center_id)] = intervals.leak_sweep_s
        wanted[(JobKind.REMOVE_DESKTOPS.value, center_id)] = intervals.removal_s
    for (pool_id,) in session.execute(select(Pool.id)).all():
        wanted[(JobKind.POOL_PROVISION.value, pool_id)] = intervals.provision_s
        wanted[(JobKind.POOL_STATS.value, pool_id)] = intervals.stats_s
        # Rollouts, scheduled refreshes and reverts on release: cheap when there are none.
        wanted[(JobKind.POOL_ROLLOUT.value, pool_id)] = intervals.provision_s
    return wanted


def ensure_jobs(session: Session, intervals: Intervals) -> int:
    """Create the jobs every center and pool needs and drop those of deleted ones;
    returns how many this unit made.

    Every engine of a cluster runs it, and on PostgreSQL each statement sees what had
    committed when it began. The jobs are read before the centers and pools: a job is
    made with or after its target, so a job whose target the later read misses is one
    of a deleted target. Read the other way round, a pool made after the pools were
    read, whose jobs another engine made before the jobs were read, lost them as stale.
    Two engines may both find a job missing: the later insert skips it rather than
    failing the unit on the duplicate."""
    existing = _existing(session)
    wanted = _wanted(session, intervals)
    stale = [key for key in existing if key not in wanted]
    if stale:
        session.execute(delete(Job).where(tuple_(Job.kind, Job.target_id).in_(stale)))
    now = utcnow()
    missing = [
        {"kind": kind, "target_id": target, "interval_s": interval, "next_run_at": now}
        for (kind, target), interval in wanted.items()
        if (kind, target) not in existing
    ]
    created = 0
    if missing:
        dialect = session.get_bind().dialect.name
        ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(Job)
        skip_made = ins.on_conflict_do_nothing(index_elements=[Job.kind, Job.target_id])
        created = len(session.execute(skip_made.returning(Job.id), missing).all())
    for key, interval in wanted.items():
        found = existing.get(key)
        if found is not None and found[1] != interval:
            # By id, unread: a job another engine deleted meanwhile matches no row.
            session.execute(
                update(Job)
                .where(Job.id == found[0])
                .values(interval_s=interval)
                .execution_options(synchronize_session=False)
            )
    return created


def poke(session: Session, kind: JobKind, target_id: str) -> None:
    """Run a job at the next tick: a pool or center just changed."""
    session.execute(
        update(Job)
        .where(Job.kind == kind.value, Job.target_id == target_id)
        .values(next_run_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def request_scan(session: Session, center_id: str, interval_s: float) -> Job:
    """Have the center's scan job run at the next tick (made now if the engine has not
    made it yet): how an admin's "scan now" is answered without scanning in the request.

    One upsert: read first, the job an engine's ``ensure_jobs`` made in between failed
    the insert (and the administrator's request) on the duplicate."""
    now = utcnow()
    dialect = session.get_bind().dialect.name
    made = (pg_insert if dialect == "postgresql" else sqlite_insert)(Job).values(
        kind=JobKind.SCAN_CENTER.value, target_id=center_id, interval_s=interval_s, next_run_at=now
    )
    job_id = session.execute(
        made.on_conflict_do_update(
            index_elements=[Job.kind, Job.target_id], set_={"next_run_at": now}
        ).returning(Job.id)
    ).scalar_one()
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None  # written by this unit's statement just now
    return job

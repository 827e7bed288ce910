"""The engine loop: claim due rows by lease, run them on a worker pool, record outcomes."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update

from deskbroker.engine import maintenance, plans, provisioner
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.jobs import Intervals, JobKind, ensure_jobs
from deskbroker.services.context import BrokerContext
from deskbroker.store import leases
from deskbroker.store.tables import (
    BrokerState,
    Center,
    Job,
    ProvisioningTask,
    Timer,
    utcnow,
)

log = logging.getLogger("deskbroker.engine")

Handler = Callable[[BrokerContext, DriverCache, str, datetime], str]
HANDLERS: dict[str, Handler] = {
    JobKind.SCAN_CENTER.value: maintenance.scan_center,
    JobKind.LEAK_SWEEP.value: maintenance.leak_sweep,
    JobKind.POOL_PROVISION.value: provisioner.reconcile_pool,
    JobKind.POOL_STATS.value: maintenance.pool_stats,
    JobKind.RETENTION.value: maintenance.retention,
}


@dataclass(frozen=True)
class Due:
    version: int
    jobs: int
    timers: int
    steps: int
    waiting: int
    requested: int


class Engine:
    """One broker's share of the background work.

    ``owner`` names this process's leases. On start the engine frees leases left by an
    earlier run of the same broker id (it died), so a restart resumes at once instead of
    waiting for the leases to expire.
    """

    def __init__(self, ctx: BrokerContext, *, workers: int | None = None) -> None:
        settings = ctx.settings
        self.ctx = ctx
        self.broker_id = settings.broker_id
        self.owner = f"{settings.broker_id}:{uuid.uuid4().hex[:8]}"
        self.drivers = DriverCache(ctx)
        self.intervals = Intervals(
            provision_s=settings.provision_interval_s, stats_s=settings.stats_interval_s
        )
        self.workers = workers or settings.engine_workers
        self.ttl_s = settings.lease_ttl_s
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="engine")
        self._running: set[Future[None]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._jobs_version = -1
        self._jobs_checked = 0.0

    # --- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="engine-loop", daemon=True)
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def recover(self) -> None:
        """Free the leases an earlier incarnation of this broker held when it died."""
        with self.ctx.db.write() as session:
            for model in (Job, Timer, ProvisioningTask):
                session.execute(
                    update(model)
                    .where(model.lease_owner.like(f"{self.broker_id}:%"))
                    .values(lease_owner=None, lease_expires_at=None)
                    .execution_options(synchronize_session=False)
                )

    def _loop(self) -> None:
        tick = self.ctx.settings.engine_tick_s
        while not self._stop.is_set():
            try:
                started = self.run_once(wait=False)
            except Exception:
                log.exception("engine tick failed")
                started = 0
            self._stop.wait(tick if started == 0 else min(tick, 0.05))

    # --- one tick ------------------------------------------------------------------
    def run_once(self, now: datetime | None = None, *, wait: bool = True) -> int:
        """Claim what is due and run it; with ``wait`` block until it is all done.

        One read finds out what is due, so an idle tick costs a single statement."""
        now = now or utcnow()
        due = self._due(now)
        self._ensure_jobs(due.version)
        started = 0
        if due.jobs and self._free() > 0:
            started += self._claim_and_submit(
                Job, Job.next_run_at, now, self._free(), self._run_job
            )
        if due.timers and self._free() > 0:
            started += self._claim_and_submit(
                Timer, Timer.due_at, now, self._free(), self._run_timer
            )
        if due.steps and self._free() > 0:
            started += self._claim_and_submit(
                ProvisioningTask,
                ProvisioningTask.next_step_at,
                now,
                self._free(),
                self._run_task,
                where=(ProvisioningTask.state.in_(provisioner.IN_FLIGHT_STATES),),
            )
        if due.waiting:
            self._watch_builds()
        if due.requested:
            for center_id, slots in self._free_build_slots():
                free = min(slots, self._free())
                if free <= 0:
                    break
                started += self._claim_and_submit(
                    ProvisioningTask,
                    ProvisioningTask.next_step_at,
                    now,
                    free,
                    self._run_task,
                    where=(
                        ProvisioningTask.state == provisioner.S.REQUESTED.value,
                        ProvisioningTask.center_id == center_id,
                    ),
                )
        if wait:
            self.drain()
        return started

    def _free(self) -> int:
        return self.workers - self._busy()

    def _due(self, now: datetime) -> Due:
        """What there is to do, in one read: each count is of unleased, due rows."""

        def count(model: Any, *where: Any) -> Any:
            free = or_(model.lease_expires_at.is_(None), model.lease_expires_at < now)
            return select(func.count()).select_from(model).where(free, *where).scalar_subquery()

        task = ProvisioningTask
        row = None
        with self.ctx.db.read() as session:
            row = session.execute(
                select(
                    select(BrokerState.config_version).where(BrokerState.id == 1).scalar_subquery(),
                    count(Job, Job.next_run_at <= now),
                    count(Timer, Timer.due_at <= now),
                    count(
                        task, task.next_step_at <= now, task.state.in_(provisioner.IN_FLIGHT_STATES)
                    ),
                    count(task, task.state == provisioner.S.WAITING.value),
                    count(
                        task, task.next_step_at <= now, task.state == provisioner.S.REQUESTED.value
                    ),
                )
            ).one()
        return Due(int(row[0] or 0), *(int(v or 0) for v in row[1:]))

    def drain(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self._busy() and time.monotonic() < deadline:
            time.sleep(0.01)

    def _busy(self) -> int:
        with self._lock:
            self._running = {f for f in self._running if not f.done()}
            return len(self._running)

    def _ensure_jobs(self, version: int) -> None:
        if version == self._jobs_version and time.monotonic() - self._jobs_checked < 30:
            return
        with self.ctx.db.write() as session:
            ensure_jobs(session, self.intervals)
        self._jobs_version = version
        self._jobs_checked = time.monotonic()

    def _claim_and_submit(
        self,
        model: type,
        due: object,
        now: datetime,
        limit: int,
        run: Callable[[str, datetime], None],
        where: tuple[object, ...] = (),
    ) -> int:
        with self.ctx.db.write() as session:
            ids = leases.claim_due(
                session,
                model,
                due,
                owner=self.owner,
                now=now,
                ttl_s=self.ttl_s,
                limit=limit,
                where=where,  # type: ignore[arg-type]
            )
        for row_id in ids:
            future = self._pool.submit(run, row_id, now)
            with self._lock:
                self._running.add(future)
        return len(ids)

    def _watch_builds(self) -> None:
        """One listing per center for all its builds; wake the ones that finished."""
        with self.ctx.db.read() as session:
            centers = session.scalars(
                select(Center).where(
                    Center.id.in_(
                        select(ProvisioningTask.center_id).where(
                            ProvisioningTask.state == provisioner.S.WAITING.value
                        )
                    )
                )
            ).all()
        for center in centers:
            try:
                finished = self.drivers.watcher(center).refresh()
            except Exception as exc:  # the builds are then looked at one by one
                log.warning("watching builds on %s failed: %s", center.name, exc)
                continue
            if finished:
                with self.ctx.db.write() as session:
                    session.execute(
                        update(ProvisioningTask)
                        .where(
                            ProvisioningTask.state == provisioner.S.WAITING.value,
                            ProvisioningTask.external_id.in_(finished),
                        )
                        .values(next_step_at=utcnow())
                        .execution_options(synchronize_session=False)
                    )

    def _free_build_slots(self) -> list[tuple[str, int]]:
        """Centers with builds waiting to start, and how many more each may run now:
        a build beyond a center's limit is not even claimed."""
        with self.ctx.db.read() as session:
            rows = session.execute(
                select(
                    ProvisioningTask.center_id,
                    func.count().filter(ProvisioningTask.state.in_(provisioner.IN_FLIGHT_STATES)),
                    func.count().filter(ProvisioningTask.state == provisioner.S.REQUESTED.value),
                )
                .where(ProvisioningTask.state.in_(provisioner.OPEN_STATES))
                .group_by(ProvisioningTask.center_id)
            ).all()
            centers = {
                c.id: c
                for c in session.scalars(
                    select(Center).where(Center.id.in_([r[0] for r in rows if r[2]]))
                ).all()
            }
        slots: list[tuple[str, int]] = []
        for center_id, in_flight, waiting in rows:
            center = centers.get(center_id)
            if not waiting or center is None:
                continue
            limit = int(getattr(self.drivers.get(center).params, "max_in_flight", 20))
            if limit - in_flight > 0:
                slots.append((center_id, limit - in_flight))
        return slots

    def _run_job(self, job_id: str, now: datetime) -> None:
        with self.ctx.db.read() as session:
            job = session.get(Job, job_id)
        if job is None:
            return
        handler = HANDLERS.get(job.kind)
        started = time.monotonic()
        try:
            if handler is None:
                raise RuntimeError(f"no handler for job kind {job.kind}")
            outcome = handler(self.ctx, self.drivers, job.target_id, now)
        except Exception as exc:
            failures = job.failures + 1
            delay = min(job.interval_s * 10, 2.0 ** min(failures, 10))
            log.warning("job %s %s failed: %s", job.kind, job.target_id, exc)
            with self.ctx.db.write() as session:
                leases.release(
                    session,
                    Job,
                    job_id,
                    self.owner,
                    failures=failures,
                    last_error=str(exc)[:2000],
                    last_run_at=utcnow(),
                    next_run_at=utcnow() + timedelta(seconds=delay),
                    runs=job.runs + 1,
                )
            return
        log.debug(
            "job %s %s: %s (%.0f ms)",
            job.kind,
            job.target_id,
            outcome,
            (time.monotonic() - started) * 1000,
        )
        finished = utcnow()
        with self.ctx.db.write() as session:
            leases.release(
                session,
                Job,
                job_id,
                self.owner,
                failures=0,
                last_error="",
                last_run_at=finished,
                last_ok_at=finished,
                runs=job.runs + 1,
                next_run_at=finished + timedelta(seconds=job.interval_s),
            )

    def _run_timer(self, timer_id: str, now: datetime) -> None:
        try:
            plans.execute_timer(self.ctx, self.drivers, timer_id, self.owner, now)
        except Exception:
            log.exception("timer %s failed", timer_id)

    def _run_task(self, task_id: str, now: datetime) -> None:
        try:
            provisioner.advance_task(self.ctx, self.drivers, task_id, self.owner, utcnow())
        except Exception:
            log.exception("provisioning task %s failed", task_id)

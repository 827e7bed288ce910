"""The engine loop: claim due rows by lease, run them on a worker pool, record outcomes."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta

from sqlalchemy import update

from deskbroker.engine import maintenance, plans, provisioner
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.jobs import Intervals, JobKind, ensure_jobs
from deskbroker.services.context import BrokerContext
from deskbroker.store import leases
from deskbroker.store.claims import config_version
from deskbroker.store.tables import Job, ProvisioningTask, Timer, utcnow

log = logging.getLogger("deskbroker.engine")

Handler = Callable[[BrokerContext, DriverCache, str, datetime], str]
HANDLERS: dict[str, Handler] = {
    JobKind.SCAN_CENTER.value: maintenance.scan_center,
    JobKind.LEAK_SWEEP.value: maintenance.leak_sweep,
    JobKind.POOL_PROVISION.value: provisioner.reconcile_pool,
    JobKind.POOL_STATS.value: maintenance.pool_stats,
    JobKind.RETENTION.value: maintenance.retention,
}


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
        """Claim what is due and run it; with ``wait`` block until it is all done."""
        now = now or utcnow()
        self._ensure_jobs()
        free = self.workers - self._busy()
        started = 0
        if free > 0:
            started += self._claim_and_submit(Job, Job.next_run_at, now, free, self._run_job)
        free = self.workers - self._busy()
        if free > 0:
            started += self._claim_and_submit(Timer, Timer.due_at, now, free, self._run_timer)
        free = self.workers - self._busy()
        if free > 0:
            started += self._claim_and_submit(
                ProvisioningTask,
                ProvisioningTask.next_step_at,
                now,
                free,
                self._run_task,
                where=(ProvisioningTask.state.in_(provisioner.OPEN_STATES),),
            )
        if wait:
            self.drain()
        return started

    def drain(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self._busy() and time.monotonic() < deadline:
            time.sleep(0.01)

    def _busy(self) -> int:
        with self._lock:
            self._running = {f for f in self._running if not f.done()}
            return len(self._running)

    def _ensure_jobs(self) -> None:
        with self.ctx.db.read() as session:
            version = config_version(session)
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

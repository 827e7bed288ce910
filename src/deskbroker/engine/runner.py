"""The engine loop: claim due rows by lease, run them on a worker pool, record outcomes."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from datetime import datetime, timedelta
from typing import Any

from deskbroker.engine import builds, handover, maintenance, plans, provisioner, removals, rollouts
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.handover import Refill
from deskbroker.engine.turns import (
    TURN_WAIT_S,
    CenterTurns,
    NoTurn,
    tenant_reserve,
    tenant_share,
)
from deskbroker.engine.watch import BuildWatcher
from deskbroker.engine.webhooks import Dispatcher, recheck_setters
from deskbroker.services.context import BrokerContext
from deskbroker.store import leases, tasks
from deskbroker.store.due import CenterWork, Due, free_leases_of, read_due, unless_asked
from deskbroker.store.jobs import Intervals, JobKind, ensure_jobs
from deskbroker.store.tables import Job, ProvisioningTask, Timer, utcnow

log = logging.getLogger("deskbroker.engine")

# How long the loop waits for a listing of builds before it goes on without it.
LISTING_WAIT_S = 0.25

Handler = Callable[[BrokerContext, DriverCache, str, datetime], str]
HANDLERS: dict[str, Handler] = {
    JobKind.SCAN_CENTER.value: maintenance.scan_center,
    JobKind.LEAK_SWEEP.value: maintenance.leak_sweep,
    JobKind.POOL_PROVISION.value: provisioner.reconcile_pool,
    JobKind.POOL_STATS.value: maintenance.pool_stats,
    JobKind.RETENTION.value: maintenance.retention,
    JobKind.AGENT_WATCH.value: plans.watch_agents,
    JobKind.REMOVE_DESKTOPS.value: removals.remove_desktops,
    JobKind.POOL_ROLLOUT.value: rollouts.advance_rollout,
    JobKind.WEBHOOK_SETTERS.value: recheck_setters,
}
# Jobs whose target is a center: they talk to that center's cloud all along.
# (``remove_desktops`` is not one: it calls its cloud only when a desktop is to go, and
# takes its turn itself then; waiting for a turn behind every idle pass would delay scans
# and sweeps.)
CENTER_JOBS = frozenset({JobKind.SCAN_CENTER.value, JobKind.LEAK_SWEEP.value})


def _unless_asked(job: Job, then: datetime) -> Any:
    """The next run at ``then``, unless someone asked for an earlier one while this run
    was out (an admin's "scan now" moves ``next_run_at`` on a leased job): then that."""
    return unless_asked(job.next_run_at, then)


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
        self.intervals = Intervals(
            provision_s=settings.provision_interval_s,
            stats_s=settings.stats_interval_s,
            webhooks_s=settings.webhook_poll_s,
            webhook_setters_s=settings.webhook_setter_check_s,
        )
        self.workers = workers or settings.engine_workers
        self.ttl_s = settings.lease_ttl_s
        # One center's work holds at most this many workers: a center whose cloud drips
        # its answers cannot take the workers every tenant's builds and timers need.
        self.center_workers = settings.engine_center_workers
        # And one tenant's centers at most this many: a tenant administrator's many
        # silent centers leave workers for the other tenants. Two tenants' shares can
        # still cover every worker: a reserve goes only to tenants with none running.
        share = tenant_share(self.workers, settings.engine_tenant_workers)
        self.turns = CenterTurns(
            self.center_workers,
            share,
            workers=self.workers,
            reserve=tenant_reserve(self.workers, share),
        )
        self.drivers = DriverCache(ctx, self.turns)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="engine")
        # Listings of builds, one out per center at most (see _list_builds).
        self._watch_pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="watch")
        self._listings: dict[str, Future[bool]] = {}
        self._running: set[Future[None]] = set()
        # The jobs and timers this engine is running, by model: never claimed again while
        # they run, and their leases renewed (see _renew_running).
        self._held: dict[type, set[str]] = {Job: set(), Timer: set()}
        self._renewed = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._jobs_version = -1
        self._jobs_checked = 0.0
        self._next_listing = float("inf")  # time.monotonic() of the next listing wanted
        # When each step of the current tick ended, to tell what a slow tick waited on.
        self._marks: list[tuple[str, float]] = []
        # Webhook deliveries post from threads of their own (engine/webhooks.py).
        self.webhooks = Dispatcher(ctx, self.owner)
        self.handlers: dict[str, Handler] = {
            **HANDLERS,
            JobKind.WEBHOOKS.value: self.webhooks.run,
        }

    # --- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        # A loop silent for longer than a lease lasts has let its leases run out.
        self.ctx.pulse.start(self.ttl_s)
        self._thread = threading.Thread(target=self._loop, name="engine-loop", daemon=True)
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        self.ctx.pulse.stop()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._pool.shutdown(wait=wait, cancel_futures=True)
        self._watch_pool.shutdown(wait=wait, cancel_futures=True)
        self.webhooks.close(wait=wait)

    def recover(self) -> None:
        """Free the leases an earlier incarnation of this broker held when it died."""
        with self.ctx.db.write() as session:
            free_leases_of(session, self.broker_id)

    def _loop(self) -> None:
        tick = self.ctx.settings.engine_tick_s
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                started = self.run_once(wait=False)
            except Exception:
                log.exception("engine tick failed")
                started = 0
            else:
                self.ctx.pulse.beat()
            self._warn_if_slow(began)
            self.ctx.pulse.workers(self._busy(), self.workers)
            wait = tick if started == 0 else min(tick, 0.05)
            # Wake for the next listing a watcher wants, rather than up to a tick late.
            wait = min(wait, max(0.005, self._next_listing - time.monotonic()))
            self._stop.wait(wait)

    def _mark(self, step: str) -> None:
        self._marks.append((step, time.monotonic()))

    def _warn_if_slow(self, began: float) -> None:
        """A tick past a third of a lease is logged with the time of each step: a loop
        that slow is about to be reported stuck by /readyz, and the steps tell whether
        the database (every step slow) or one step was to blame."""
        took = time.monotonic() - began
        if took <= self.ttl_s / 3:
            return
        steps, last = [], began
        for step, at in self._marks:
            steps.append(f"{step} {at - last:.2f} s")
            last = at
        log.warning(
            "an engine tick took %.1f s (%s); past %.0f s /readyz reports the engine stuck",
            took,
            ", ".join(steps) or "no step ended",
            self.ttl_s,
        )

    # --- one tick ------------------------------------------------------------------
    def run_once(self, now: datetime | None = None, *, wait: bool = True) -> int:
        """Claim what is due and run it; with ``wait`` block until it is all done.

        One read finds out what is due, so an idle tick costs a single statement.
        Builds the watchers saw finish are handed over first, so the slots they free
        are refilled in the same tick."""
        now = now or utcnow()
        self._next_listing = float("inf")
        self._marks = []
        self._renew_running()
        self._mark("renewing leases")
        due = self._due(now)
        self._mark("reading what is due")
        started = 0
        # Jobs of a center or pool made since the last tick run in this one: their first
        # run is due the moment they are made, after ``now``.
        created = self._ensure_jobs(due.version)
        self._mark("checking jobs")
        # Plan timers first: each is a user's power or release action, due once, while a
        # periodic job that misses this tick runs at the next; jobs first let a few due
        # jobs per center and pool take every worker and starve the timers.
        if due.timers and self._free() > 0:
            started += self._claim_and_submit(
                Timer, Timer.due_at, now, self._free(), self._run_timer
            )
            self._mark("claiming timers")
        # Builds and build steps keep a worker: the periodic jobs of many pools, each due
        # every few seconds, otherwise took every worker at every tick of a busy engine
        # and no requested build was ever started.
        kept = 1 if self.workers > 1 and (due.steps or any(w.requested for w in due.centers)) else 0
        if (due.jobs or created) and self._free() - kept > 0:
            started += self._claim_and_submit(
                Job,
                Job.next_run_at,
                utcnow() if created else now,
                self._free() - kept,
                self._run_job,
            )
            self._mark("claiming jobs")
        for work in due.centers:
            started += self._builds(work, now)
        if due.centers:
            self._mark("builds")
        if due.steps and self._free() > 0:
            with self.ctx.db.connect_write() as conn:
                rows = tasks.claim_steps(
                    conn, owner=self.owner, now=now, ttl_s=self.ttl_s, limit=self._free()
                )
            for row in rows:
                self._submit(self._run_step, row)
            started += len(rows)
            self._mark("claiming build steps")
        if wait:
            self.drain()
        return started

    def _free(self) -> int:
        return self.workers - self._busy()

    def _due(self, now: datetime) -> Due:
        """What there is to do, in one read: counts of unleased, due rows, and the open
        builds per center."""
        with self.ctx.db.connect_read() as conn:
            return read_due(conn, now)

    def drain(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self._busy() and time.monotonic() < deadline:
            time.sleep(0.01)

    def _busy(self) -> int:
        with self._lock:
            self._running = {f for f in self._running if not f.done()}
            return len(self._running)

    def _submit(self, run: Callable[[Any], None], item: Any) -> None:
        future = self._pool.submit(run, item)
        with self._lock:
            self._running.add(future)

    def _ensure_jobs(self, version: int) -> int:
        """Jobs for every center and pool, checked when the configuration changed (or
        every 30 s); returns how many were made."""
        if version == self._jobs_version and time.monotonic() - self._jobs_checked < 30:
            return 0
        with self.ctx.db.write() as session:
            created = ensure_jobs(session, self.intervals)
        self._jobs_version = version
        self._jobs_checked = time.monotonic()
        return created

    def _claim_and_submit(
        self,
        model: type,
        due: object,
        now: datetime,
        limit: int,
        run: Callable[[str, datetime], None],
    ) -> int:
        # A row this engine is still running is not claimed again, whatever its lease
        # says: a slow run must not overlap a second run of itself.
        with self._lock:
            held = list(self._held[model])
        where = [leases.table_of(model).c.id.not_in(held)] if held else []
        with self.ctx.db.write() as session:
            ids = leases.claim_due(
                session,
                model,
                due,
                owner=self.owner,
                now=now,
                ttl_s=self.ttl_s,
                limit=limit,
                where=where,
            )
        for row_id in ids:
            with self._lock:
                self._held[model].add(row_id)
            future = self._pool.submit(self._holding, model, run, row_id, now)
            with self._lock:
                self._running.add(future)
        return len(ids)

    def _holding(
        self, model: type, run: Callable[[str, datetime], None], row_id: str, now: datetime
    ) -> None:
        """``run``, the row counted as held by this engine until it ends (released)."""
        try:
            run(row_id, now)
        finally:
            with self._lock:
                self._held[model].discard(row_id)

    def _renew_running(self) -> None:
        """Extend the leases of the jobs and timers this engine is running, every third of
        a lease: a run longer than a lease (a rollout round asking a cloud for hundreds
        of rebuilds) keeps its row while this node is alive. A node that stalls stops
        renewing with its loop, so its rows pass on as before; what a stale run does
        then is fenced where it acts (a rebuild's ask is claimed on its row first)."""
        if time.monotonic() - self._renewed < self.ttl_s / 3:
            return
        self._renewed = time.monotonic()
        with self._lock:
            held = {model: list(ids) for model, ids in self._held.items() if ids}
        if not held:
            return
        until = utcnow() + timedelta(seconds=self.ttl_s)
        with self.ctx.db.write() as session:
            for model, ids in held.items():
                kept = leases.extend_all(session, model, ids, self.owner, until)
                if kept < len(ids):
                    log.warning(
                        "%d of %d running %s leases passed to another node",
                        len(ids) - kept,
                        len(ids),
                        leases.table_of(model).name,
                    )

    # --- builds --------------------------------------------------------------------
    def _builds(self, work: CenterWork, now: datetime) -> int:
        """A center's builds: one listing for all those in flight, then, in one
        transaction, the finished ones handed over and the slots refilled (the in-flight
        limit counted again under the claim, so several brokers together keep to it).
        Returns how many builds finished or started."""
        center = self.drivers.center(work.center_id)
        if center is None:
            return 0
        watcher = self.drivers.watcher(center)
        if work.waiting:
            self._list_builds(watcher, center.id, center.name, work.waiting)
        limit = self.drivers.get(center).limits().max_in_flight
        refill = None
        room = min(self._free(), self.turns.room(center.id, center.tenant_id))
        if work.requested and room > 0 and (work.in_flight < limit or watcher.finished()):
            refill = Refill(limit, room, self.owner, now, self.ttl_s)
        try:
            ready, claimed = handover.finish_and_refill(
                self.ctx, watcher, center.id, refill, tenant_id=center.tenant_id
            )
        except Exception:
            log.exception("handing over or starting builds on %s failed", center.name)
            return 0
        for row in claimed:
            # Before it runs: the next tick's room sees it.
            self.turns.count(row.center_id, row.tenant_id)
            self._submit(self._run_build, row)
        if work.waiting:
            wanted = watcher.next_listing(work.waiting - ready)
            self._next_listing = min(self._next_listing, wanted)
        return ready + len(claimed)

    def _list_builds(self, watcher: BuildWatcher, center_id: str, name: str, waiting: int) -> None:
        """List a center's builds on a watch thread, waited for briefly: a cloud slow to
        answer (or never answering) must not stall the loop, so a listing still out
        after ``LISTING_WAIT_S`` finishes on its own and its news is used next tick."""
        with self._lock:
            out = self._listings.get(center_id)
            if out is not None and not out.done():
                return
            out = self._watch_pool.submit(watcher.refresh, waiting)
            self._listings[center_id] = out
        try:
            out.result(timeout=LISTING_WAIT_S)
        except FuturesTimeout:
            log.warning("listing the builds on %s is slow; the engine goes on meanwhile", name)
        except Exception as exc:  # the builds are then looked at one by one
            log.warning("watching builds on %s failed: %s", name, exc)

    def _run_job(self, job_id: str, now: datetime) -> None:
        with self.ctx.db.read() as session:
            job = session.get(Job, job_id)
        if job is None:
            return
        if job.kind not in CENTER_JOBS:
            self._do_job(job, job_id, now)
            return
        center = self.drivers.center(job.target_id)
        tenant = center.tenant_id if center is not None else ""
        if not self.turns.take(job.target_id, tenant):
            # The center holds its share of workers: the job waits its turn unleased.
            with self.ctx.db.write() as session:
                later = utcnow() + timedelta(seconds=TURN_WAIT_S)
                leases.release(session, Job, job_id, self.owner, next_run_at=later)
            return
        try:
            self._do_job(job, job_id, now)
        finally:
            self.turns.end(job.target_id, tenant)

    def _do_job(self, job: Job, job_id: str, now: datetime) -> None:
        handler = self.handlers.get(job.kind)
        started = time.monotonic()
        try:
            if handler is None:
                raise RuntimeError(f"no handler for job kind {job.kind}")
            outcome = handler(self.ctx, self.drivers, job.target_id, now)
        except NoTurn:
            # Its center's work holds its share of workers: not a failure, a wait.
            with self.ctx.db.write() as session:
                later = utcnow() + timedelta(seconds=TURN_WAIT_S)
                leases.release(session, Job, job_id, self.owner, next_run_at=later)
            return
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
                    next_run_at=_unless_asked(job, utcnow() + timedelta(seconds=delay)),
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
                next_run_at=_unless_asked(job, finished + timedelta(seconds=job.interval_s)),
            )

    def _run_timer(self, timer_id: str, now: datetime) -> None:
        try:
            plans.execute_timer(self.ctx, self.drivers, timer_id, self.owner, now, turns=self.turns)
        except Exception:
            log.exception("timer %s failed", timer_id)

    def _run_build(self, task: tasks.TaskRow) -> None:
        # Claimed within the center's room, its turn counted (see _builds).
        try:
            builds.TaskStep(self.ctx, self.drivers, task, self.owner).build()
        except Exception:
            log.exception("provisioning task %s failed", task.id)
        finally:
            self.turns.end(task.center_id, task.tenant_id)

    def _run_step(self, task: tasks.TaskRow) -> None:
        if not self.turns.take(task.center_id, task.tenant_id):
            with self.ctx.db.write() as session:
                later = utcnow() + timedelta(seconds=TURN_WAIT_S)
                leases.release(session, ProvisioningTask, task.id, self.owner, next_step_at=later)
            return
        try:
            builds.TaskStep(self.ctx, self.drivers, task, self.owner).run(utcnow())
        except Exception:
            log.exception("provisioning task %s failed", task.id)
        finally:
            self.turns.end(task.center_id, task.tenant_id)

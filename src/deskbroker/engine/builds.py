"""One step of a provisioning task: the persisted state machine that builds a desktop.

``requested → creating → waiting → addressing → ready | failed``, persisted after every
step, so a broker killed at any point leaves work another broker (or itself, restarted)
can finish: an instance created just before a crash is found again by its task tag.
Builds a watcher sees finish are handed over together (``handover``); a step finishes
only those it looks at itself.

Every step's outcome is fenced: the unit that records it starts by checking this node
still holds the task's lease (``leases.release_held``) and rolls back whole if not, and
an instance is created or terminated only after the lease was renewed (``_renew``). A
node that stalled past its lease therefore records nothing and deletes nothing; the
holder finds whatever it created by the task's tag, and does not start over while a
create of the previous holder's could still land (``_resume_create``), nor after a
create whose outcome the cloud left unknown (``_hold_for_landing``).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from deskbroker.centers.base import (
    Capability,
    CenterDriver,
    MachineInfo,
    QuotaExceeded,
    UnknownName,
)
from deskbroker.domain.states import (
    PROVISIONING_TRANSITIONS,
    PowerState,
    transition,
)
from deskbroker.domain.timestamps import aware
from deskbroker.engine import spread
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.handover import hand_over
from deskbroker.engine.requests import request_of
from deskbroker.engine.watch import BuildWatcher
from deskbroker.errors import CenterError, NotSent
from deskbroker.outbound import OutboundRefused
from deskbroker.services import agents
from deskbroker.services.agents import ENROL_KEY
from deskbroker.services.context import BrokerContext
from deskbroker.store import build_steps, events, leases, membership
from deskbroker.store.db import Unit
from deskbroker.store.leases import LeaseLost
from deskbroker.store.tables import Center, utcnow
from deskbroker.store.tasks import (
    MAX_ATTEMPTS,
    OPEN_STATES,
    TASKS,
    S,
    TaskRow,
    in_flight,
    last_error_of,
    lock_center,
    task_tag,
)

log = logging.getLogger("deskbroker.engine.builds")

# A pool whose builds keep failing waits longer after each: the quota back-off times
# 2, 4, 8... up to this many times it.
POOL_BACKOFF_STEPS = 64
# How often a task in ``creating`` whose instance is not found yet is looked at again.
RELOOK_S = 30.0


def call_bound_s(driver: CenterDriver) -> float:
    """The longest one call to the driver's center may take: its ``timeout_s`` when its
    parameters have one (retries included), else the most any center may be given."""
    timeout = getattr(getattr(driver, "params", None), "timeout_s", None)
    if isinstance(timeout, int | float) and timeout > 0:
        return min(float(timeout), leases.CLOUD_CALL_BOUND_S)
    return leases.CLOUD_CALL_BOUND_S


def pool_backoff_s(base_s: float, failures: int) -> float:
    """How long a pool waits before building again after ``failures`` in a row."""
    return base_s * min(2.0 ** max(0, failures - 1), float(POOL_BACKOFF_STEPS))


# In an error's chain, what shows that the request never left the broker: no connection
# could be made (refused, the name not resolved), the outbound policy refused the
# address, or the driver refused to send it (no helper place left).
_NOT_SENT: tuple[type[BaseException], ...] = (
    ConnectionRefusedError,
    socket.gaierror,
    OutboundRefused,
    NotSent,
)
# AWS's error codes that say the service failed, not that it refused the request.
_SERVER_SIDE_CODES = frozenset({"InternalError", "InternalFailure", "ServiceUnavailable"})


def made_nothing(exc: BaseException) -> bool:
    """Whether a create that raised ``exc`` surely made nothing: the cloud refused it (a
    4xx; a 503, which the OpenStack session too takes as nothing done; an AWS error code
    but its own failure), the request never left, or the driver refused it before asking
    (its own error, nothing under it). No answer in time, a 5xx, a connection dropped once
    the request was out, a driver bug: the instance may exist. The seam has no word for
    this: the answer is read where drivers' errors carry it (``cloud_status``, ``code``)."""
    if isinstance(exc, QuotaExceeded | UnknownName):
        return True
    status = getattr(exc, "cloud_status", None)
    if isinstance(status, int):
        return 400 <= status < 500 or status == 503
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        return code not in _SERVER_SIDE_CODES
    seen: set[int] = set()
    under: BaseException | None = exc.__cause__ or exc.__context__
    if under is None:
        return isinstance(exc, CenterError)
    while under is not None and id(under) not in seen:
        if isinstance(under, _NOT_SENT):
            return True
        seen.add(id(under))
        under = under.__cause__ or under.__context__
    return False


class TaskStep:
    """One step of one task, run by an engine worker holding the task's lease."""

    def __init__(self, ctx: BrokerContext, drivers: DriverCache, task: TaskRow, owner: str) -> None:
        self.ctx = ctx
        self.drivers = drivers
        self.task = task
        self.owner = owner
        self.watcher: BuildWatcher | None = None
        self.center_name = ""
        self.state = S(task.state)

    def _moved(self, target: S) -> str:
        """The task's next state through the table (we hold the lease, so the state read
        with it still holds)."""
        return transition(
            PROVISIONING_TRANSITIONS, self.state, target, subject=f"task {self.task.name}"
        ).value

    def _save(
        self,
        state: S | None = None,
        *,
        delay_s: float | None = None,
        also: Callable[[Unit], None] | None = None,
        holds: str | None = None,
        **values: Any,
    ) -> None:
        """Persist the outcome of this step (and ``also`` in the same transaction), and
        let go of the lease. ``holds``: the tenant whose pool membership ``also``
        changes, held before the task's row is locked (``membership.hold``)."""
        if delay_s is None:
            delay_s = self.ctx.settings.provision_poll_s
        now = utcnow()
        if state is not None:
            values["state"] = self._moved(state)
            values["step_started_at"] = now
        with self.ctx.db.write() as session:
            if holds is not None:
                membership.hold(session, holds)
            # The fence first: a step whose lease passed to another node writes nothing.
            leases.release_held(
                session,
                TASKS,
                self.task.id,
                self.owner,
                next_step_at=now + timedelta(seconds=delay_s),
                **values,
            )
            if also is not None:
                also(session)

    def _open(self) -> tuple[Center, CenterDriver] | None:
        center = self.drivers.center(self.task.center_id)
        if center is None:
            return None  # the center's deletion cascades to its tasks
        driver = self.drivers.get(center)
        self.watcher = self.drivers.watcher(center)
        self.center_name = center.name
        return center, driver

    def build(self) -> None:
        """A build just claimed (and moved to ``creating``): ask the cloud for it."""
        opened = self._open()
        if opened is not None:
            self._guarded(opened[1], lambda: self._start(opened[1]))

    def run(self, now: datetime) -> None:
        """Whatever step the task's state calls for."""
        task = self.task
        opened = self._open() if task.state in OPEN_STATES else None
        if opened is None:
            return
        center, driver = opened

        def step() -> None:
            match self.state:
                case S.REQUESTED:
                    self._create(center, driver)
                case S.CREATING:
                    self._resume_create(driver)
                case S.WAITING:
                    self._wait(driver, now)
                case S.ADDRESSING:
                    self._address(driver)

        self._guarded(driver, step)

    def _guarded(self, driver: CenterDriver, step: Callable[[], None]) -> None:
        try:
            try:
                step()
            except LeaseLost:
                raise
            except QuotaExceeded as exc:
                self._quota(exc.detail)
            except UnknownName as exc:
                # Another try asks for the same missing name: fail now, the pool backs off.
                self._fail(driver, exc.where(self.center_name), final=True)
            except CenterError as exc:
                self._fail(driver, exc.detail)
            except Exception as exc:  # a driver bug must not wedge the task forever
                self._fail(driver, f"unexpected error: {exc}")
        except LeaseLost as lost:
            # This node stalled past its lease (reaped, or the lease ran out) and another
            # took the task over: whatever this step learned is the new holder's to find.
            log.warning("build %s: %s; its outcome here was not recorded", self.task.name, lost)

    def _create(self, center: Center, driver: CenterDriver) -> None:
        """A requested task handed to a step directly (the engine claims builds with
        ``claim_builds`` instead): the same in-flight gate, then the same creation."""
        limit = driver.limits().max_in_flight
        with self.ctx.db.write() as session:
            lock_center(session, center.id)
            if in_flight(session, center.id) >= limit:
                leases.release(
                    session,
                    TASKS,
                    self.task.id,
                    self.owner,
                    next_step_at=utcnow() + timedelta(seconds=self.ctx.settings.provision_poll_s),
                )
                return
            # Persist the intent before the call: a crash from here on is resumed by tag.
            build_steps.mark_creating(
                session,
                self.task.id,
                self.owner,
                transition(PROVISIONING_TRANSITIONS, S.REQUESTED, S.CREATING).value,
                utcnow(),
            )
        self.state = S.CREATING
        self._start(driver)

    def _start(self, driver: CenterDriver) -> None:
        task = self.task
        driver.require(Capability.PROVISION)
        if task.attempts:
            # An earlier attempt may have reached the cloud before it failed: adopt it.
            found = driver.find_tagged(task_tag(task.id))
            if found:
                self._adopt(found[0])
                return
        if self.watcher is not None:
            self.watcher.start_cursor()
        asked_at = time.monotonic()
        secret = (
            agents.enrolment_secret(self.ctx, task.desktop_id, task.tenant_id)
            if task.desktop_id
            else ""
        )
        # The last moment before the cloud is asked: a node that stalled past its lease
        # (the cursor above may take a while) asks nothing.
        self._renew(asking=True)
        try:
            external_id = driver.create(request_of(task, {ENROL_KEY: secret} if secret else None))
        except Exception as exc:
            if made_nothing(exc) or Capability.LEAK_SWEEP not in driver.capabilities:
                raise
            reason = exc.detail if isinstance(exc, CenterError) else f"unexpected error: {exc}"
            self._hold_for_landing(driver, reason)
            return
        if self.watcher is not None:
            self.watcher.building(external_id, asked_at)
        self._created(external_id)

    def _created(self, external_id: str) -> None:
        """The cloud has the build: record its id on the task and the desktop (so a scan
        meeting the instance knows it) and wait for it, in one Core transaction."""
        task = self.task
        state = self._moved(S.WAITING)
        now = utcnow()
        # The watcher wakes the build when it finishes; the first look is a safety net.
        after = timedelta(seconds=self._next_look(False))
        with self.ctx.db.connect_write() as conn:
            build_steps.record_created(
                conn,
                task_id=task.id,
                owner=self.owner,
                desktop_id=task.desktop_id,
                external_id=external_id,
                state=state,
                now=now,
                next_step_at=now + after,
            )
        self.state = S.WAITING

    def _hold_for_landing(self, driver: CenterDriver, reason: str) -> None:
        """The create failed, but the cloud may have made the instance all the same (a
        retry now would make a second): the attempt counts, and the task stays
        ``creating`` while the instance may land, counted from now (a call given up on
        may still be on its way). ``_resume_create`` adopts it if it comes by its tag,
        and tries again (or fails) only once none can land."""
        task = self.task
        now = utcnow()
        log.warning("build %s: the cloud may have made it (%s): looking for it", task.name, reason)
        self._look_again(
            now + timedelta(seconds=call_bound_s(driver)),
            attempts=task.attempts + 1,
            last_error=reason,
            step_started_at=now,
        )

    def _resume_create(self, driver: CenterDriver) -> None:
        landing = self._create_may_land_until(driver)
        try:
            found = driver.find_tagged(task_tag(self.task.id))
        except CenterError as exc:
            if landing <= utcnow():
                raise
            # Not knowing is no reason to build another: look again.
            log.warning("build %s: looking for its instance failed: %s", self.task.name, exc)
            self._look_again(landing)
            return
        if not found:
            if landing > utcnow():
                self._look_again(landing)
            elif self.task.attempts >= MAX_ATTEMPTS:
                # The last attempt's create left no instance: fail as it would have.
                with self.ctx.db.read() as session:
                    reason = last_error_of(session, self.task.id)
                self._fail(driver, reason, counted=True)
            else:
                self._back_to_requested()
            return
        keep, *extra = sorted(found, key=lambda m: m.external_id)
        if extra:
            self._renew()
        for duplicate in extra:
            driver.terminate(duplicate)
        self._adopt(keep)

    def _adopt(self, machine: MachineInfo) -> None:
        """The instance an earlier attempt asked for, found by its tag: recorded, and its
        state as found given to the watcher, so a build that finished meanwhile is handed
        over at the next tick."""
        self._created(machine.external_id)
        if self.watcher is not None:
            self.watcher.adopted(machine)

    def _renew(self, *, asking: bool = False) -> None:
        """Extend the lease before an act that cannot be undone (creating or terminating
        an instance): ``LeaseLost`` instead when another node holds the task now. When
        ``asking`` for the instance, the moment is kept as the step's start: a node that
        takes the task over knows until when that create may land."""
        now = utcnow()
        until = now + timedelta(seconds=self.ctx.settings.lease_ttl_s)
        with self.ctx.db.write() as session:
            if not asking:
                leases.renew_held(session, TASKS, self.task.id, self.owner, until)
                return
            build_steps.renew_to_create(session, self.task.id, self.owner, until, now)

    def _create_may_land_until(self, driver: CenterDriver) -> datetime:
        """Until when a create may still land: a previous holder's asked right after the
        renewal that set ``step_started_at`` (no node can renew after this one took the
        task over), and a call lasts at most the center's call timeout; after a create
        whose outcome is unknown, ``step_started_at`` is when that call was given up on
        (``_hold_for_landing``)."""
        asked = aware(self.task.step_started_at or utcnow())
        return asked + timedelta(seconds=call_bound_s(driver))

    def _look_again(self, landing: datetime, **values: Any) -> None:
        """Nothing tagged yet, but a create may still land: sending the task back to
        ``requested`` now would build a second instance and leave that one to nobody.
        Look again later (at the latest when no create can land any more)."""
        later = min(landing, utcnow() + timedelta(seconds=RELOOK_S))
        with self.ctx.db.write() as session:
            leases.release_held(
                session, TASKS, self.task.id, self.owner, next_step_at=later, **values
            )

    def _back_to_requested(self) -> None:
        # creating → requested undoes a step that never reached the cloud.
        with self.ctx.db.write() as session:
            leases.release_held(
                session,
                TASKS,
                self.task.id,
                self.owner,
                state=self._moved(S.REQUESTED),
                next_step_at=utcnow(),
            )

    def _wait(self, driver: CenterDriver, now: datetime) -> None:
        task = self.task
        started = aware(task.step_started_at or now)
        waited = (now - started).total_seconds()
        machine = self.watcher.look(task.external_id or "") if self.watcher else None
        blind = (
            self.watcher is None
            or self.watcher.watching_since is None
            or self.watcher.watching_since > started
        )
        if machine is None and (blind or waited > 30):
            # No watcher, or no news for long: ask about this one build directly.
            machine = driver.machine(task.external_id or "")
            if machine is None:
                raise CenterError("the instance disappeared while it was being built")
        if machine is not None and machine.gone:
            raise CenterError("the instance disappeared while it was being built")
        if machine is not None and machine.power_state is PowerState.RUNNING:
            if self.watcher is not None:
                self.watcher.learned(waited)
            if driver.needs_address(request_of(task)):
                self._save(S.ADDRESSING, delay_s=0)
            else:
                self._finish(machine, machine.address)
            return
        if machine is not None and machine.power_state is PowerState.ERROR:
            fault = machine.fault or "the cloud reported ERROR"
            raise CenterError(f"build failed: {fault}")
        timeout = driver.limits().build_timeout_s
        if waited > timeout:
            raise CenterError(f"the instance stayed in BUILD for more than {timeout:.0f} s")
        self._save(delay_s=self._next_look(blind))

    def _next_look(self, blind: bool) -> float:
        """A watched build is woken when it finishes: the look is only a safety net, a
        little after builds here usually finish and the watcher would have seen it."""
        poll = self.ctx.settings.provision_poll_s
        if blind or self.watcher is None or not self.watcher.can_watch:
            return poll
        # Until a build here has been seen to finish, guess ten polls.
        expected = self.watcher.expected_build_s or 10 * poll
        return max(poll, min(30.0, expected + 2 * poll))

    def _address(self, driver: CenterDriver) -> None:
        task = self.task
        address = driver.attach_address(task.external_id or "", request_of(task))
        self._finish(driver.machine(task.external_id or ""), address)

    def _finish(self, machine: MachineInfo | None, address: str) -> None:
        """The desktop is built and reachable: hand it to the pool, in the same
        transaction as the step that says so."""
        task = self.task
        self._save(
            S.READY,
            delay_s=0,
            holds=task.tenant_id,
            also=lambda session: hand_over(session, [(task, machine, address)]),
        )
        if self.watcher is not None and task.external_id:
            self.watcher.settle({task.external_id}, set())

    def _quota(self, words: str) -> None:
        task = self.task
        now = utcnow()
        backoff = self.ctx.settings.quota_backoff_s
        with self.ctx.db.write() as session:
            self._hold_deletes(session)
            leases.release_held(
                session,
                TASKS,
                task.id,
                self.owner,
                state=self._moved(S.REQUESTED),
                last_error=words,
                next_step_at=now + timedelta(seconds=backoff),
            )
            if task.pool_id:
                build_steps.pool_over_quota(session, task.pool_id, words)
                # A pool building in several centers tries the next one at once.
                if spread.overflow_build(session, task, words, now, backoff):
                    build_steps.step_now(session, task.id, now)

    def _fail(
        self, driver: CenterDriver, reason: str, *, final: bool = False, counted: bool = False
    ) -> None:
        """A failed attempt: clean up the instance, retry with backoff, then quarantine
        (at once when ``final``: another try cannot succeed). ``counted`` when the
        attempt was counted already (a create whose outcome was waited for)."""
        task = self.task
        attempts = task.attempts if counted else task.attempts + 1
        deletable = bool((task.request or {}).get("deletable", True))
        cleaned = task.external_id is None
        if task.external_id and deletable:
            self._renew()
            try:
                driver.terminate(MachineInfo(external_id=task.external_id, name=task.name))
                cleaned = True
            except CenterError:
                cleaned = False
        with self.ctx.db.write() as session:
            self._hold_deletes(session)
            if attempts < MAX_ATTEMPTS and cleaned and not final:
                leases.release_held(
                    session,
                    TASKS,
                    task.id,
                    self.owner,
                    state=self._moved(S.REQUESTED),
                    attempts=attempts,
                    last_error=reason,
                    external_id=None,
                    next_step_at=utcnow()
                    + timedelta(
                        seconds=min(
                            60.0, self.ctx.settings.provision_retry_base_s * 2 ** (attempts - 1)
                        )
                    ),
                )
                if task.desktop_id:
                    build_steps.desktop_awaits_build(session, task.desktop_id, task.id)
                return
            leases.release_held(
                session,
                TASKS,
                task.id,
                self.owner,
                state=self._moved(S.FAILED),
                attempts=attempts,
                last_error=reason,
                desktop_id=None if cleaned else task.desktop_id,
            )
            if task.desktop_id:
                build_steps.desktop_failed(session, task.desktop_id, reason, cleaned=cleaned)
            self._pool_failed(
                session, reason if final else f"a build failed {attempts} times: {reason}"
            )
            events.append(
                session,
                "provision.failed",
                tenant_id=task.tenant_id,
                actor="engine",
                pool_id=task.pool_id,
                desktop_id=None if cleaned else task.desktop_id,
                detail={"name": task.name, "reason": reason, "attempts": attempts},
            )

    def _hold_deletes(self, session: Unit) -> None:
        """Before a failed step's unit writes its task's row: the tenant's membership,
        which an administrator's delete of the task's pool or center holds before it
        locks the pool's row or the desktops' and then, by the foreign keys, the tasks'.
        The step writes the pool's row (``_pool_failed``, ``pool_over_quota``) or the
        desktop's after its task's; without the lock the two waited for each other on
        PostgreSQL and one was rolled back. Failures are few: the lock costs little."""
        membership.hold(session, self.task.tenant_id)

    def _pool_failed(self, session: Unit, cause: str) -> None:
        """One more build of the pool failed for good: it waits before building again,
        exponentially longer, and its status keeps the first cause of the streak (the
        later ones are often only its symptoms)."""
        if not self.task.pool_id:
            return
        pool = build_steps.lock_pool(session, self.task.pool_id)
        if pool is None:
            return
        failures = (pool.build_failures or 0) + 1
        if failures == 1 or not pool.last_error:
            pool.last_error = cause
        pool.build_failures = failures
        pool.builds_resume_at = utcnow() + timedelta(
            seconds=pool_backoff_s(self.ctx.settings.quota_backoff_s, failures)
        )
        pool.status = "error"

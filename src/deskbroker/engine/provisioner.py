"""Pools that provision themselves.

``reconcile_pool`` turns a pool's targets into provisioning tasks (or retires surplus
desktops); ``advance_task`` moves one task a step through
``requested → creating → waiting → addressing → ready | failed``, persisting each step so
that a broker killed at any point leaves work another broker (or itself, restarted) can
finish: an instance created just before a crash is found again by its task tag.
"""

from __future__ import annotations

import secrets as random_tokens
import zoneinfo
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from deskbroker.centers.base import Capability, CenterDriver, MachineInfo, ProvisionRequest
from deskbroker.centers.openstack.driver import QuotaExceeded
from deskbroker.domain import tags as name_tags
from deskbroker.domain.provisioning import PoolCounts, Targets, targets, to_create, to_retire
from deskbroker.domain.states import (
    ACTIVE_SESSION_STATES,
    PROVISIONING_TRANSITIONS,
    Availability,
    PowerState,
    ProvisioningState,
    transition,
)
from deskbroker.engine import volumes
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.watch import BuildWatcher
from deskbroker.errors import CenterError
from deskbroker.services.context import BrokerContext
from deskbroker.services.desktops import serve_queues
from deskbroker.store import events, leases, membership
from deskbroker.store.tables import (
    Center,
    Desktop,
    Pool,
    PoolMember,
    ProvisioningTask,
    QueueEntry,
    SessionRow,
    Tenant,
    new_id,
    utcnow,
)

S = ProvisioningState
OPEN_STATES = (S.REQUESTED.value, S.CREATING.value, S.WAITING.value, S.ADDRESSING.value)
IN_FLIGHT_STATES = (S.CREATING.value, S.WAITING.value, S.ADDRESSING.value)
MAX_ATTEMPTS = 3


def task_tag(task_id: str) -> str:
    return f"task-{task_id}"


def _local(moment: datetime, zone: str) -> datetime:
    try:
        return moment.astimezone(zoneinfo.ZoneInfo(zone))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return moment


def pool_counts(session: Session, pool_id: str) -> PoolCounts:
    members = select(PoolMember.desktop_id).where(PoolMember.pool_id == pool_id)
    gone = (PowerState.DELETED.value, PowerState.DELETING.value)
    total = (
        session.scalar(
            select(func.count())
            .select_from(Desktop)
            .where(Desktop.id.in_(members), Desktop.power_state.not_in(gone))
        )
        or 0
    )
    free = (
        session.scalar(
            select(func.count())
            .select_from(Desktop)
            .where(
                Desktop.id.in_(members),
                Desktop.assigned_user_id.is_(None),
                Desktop.power_state.not_in((*gone, PowerState.ERROR.value)),
                (Desktop.availability == Availability.AVAILABLE.value)
                | (Desktop.power_state == PowerState.BUILDING.value),
            )
        )
        or 0
    )
    in_flight = (
        session.scalar(
            select(func.count())
            .select_from(ProvisioningTask)
            .where(ProvisioningTask.pool_id == pool_id, ProvisioningTask.state.in_(OPEN_STATES))
        )
        or 0
    )
    waiting = (
        session.scalar(
            select(func.count()).select_from(QueueEntry).where(QueueEntry.pool_id == pool_id)
        )
        or 0
    )
    return PoolCounts(int(total), int(free), int(waiting), int(in_flight))


def reconcile_pool(ctx: BrokerContext, drivers: DriverCache, pool_id: str, now: datetime) -> str:
    """Bring one pool towards its targets; returns the pool's status in words."""
    retire: list[str] = []
    with ctx.db.write() as session:
        pool = session.get(Pool, pool_id)
        if pool is None or not (pool.provisioning or {}).get("enabled"):
            return "provisioning is off"
        provisioning: dict[str, Any] = pool.provisioning
        center_id = provisioning.get("center_id") or next(iter(pool.center_ids or []), None)
        center = session.get(Center, center_id) if center_id else None
        if center is None:
            pool.status, pool.last_error = "error", "no center to provision in"
            return pool.last_error
        limits = targets(provisioning, _local(now, provisioning.get("timezone", "UTC")))
        counts = pool_counts(session, pool.id)
        create = to_create(limits, counts)
        if create:
            _request(session, pool, center, provisioning, create)
        surplus = to_retire(limits, counts)
        if surplus:
            retire = _mark_for_retirement(session, pool.id, surplus)
        words = _status_words(limits, counts, create, len(retire))
        pool.status_message = words
    if retire:
        _retire(ctx, drivers, center_id or "", retire)
    size = (provisioning.get("parameters") or {}).get("data_volume_gb")
    if size and center is not None:
        volumes.follow_users(ctx, drivers, pool_id, center, int(size))
    return words


def _status_words(limits: Targets, counts: PoolCounts, create: int, retire: int) -> str:
    where = f" ({limits.window})" if limits.window else ""
    words = (
        f"{counts.total} desktops, {counts.unassigned} free or building, "
        f"{counts.in_flight} provisioning, {counts.waiting_users} users waiting; "
        f"target {limits.min_unassigned} free, at most {limits.max_total}{where}"
    )
    if create:
        words += f"; requested {create} more"
    if retire:
        words += f"; retiring {retire}"
    return words


def _request(
    session: Session, pool: Pool, center: Center, provisioning: dict[str, Any], count: int
) -> None:
    params: dict[str, Any] = dict(provisioning.get("parameters") or {})
    template = params.get("name_template") or "{POOL}-{SEQUENCE:3}"
    sequence = pool.sequence_next or int(params.get("sequence_start", 1))
    tenant = session.get(Tenant, pool.tenant_id)
    rows: list[dict[str, Any]] = []
    now = utcnow()
    for _ in range(count):
        task_id, desktop_id = new_id(), new_id()
        name = name_tags.render(
            template,
            {
                "SEQUENCE": sequence,
                "POOL": pool.name,
                "CENTER": center.name,
                "TENANT": tenant.name if tenant else "",
                "RANDOM": random_tokens.token_hex(3),
            },
        )
        sequence += 1
        session.add(
            Desktop(
                id=desktop_id,
                tenant_id=pool.tenant_id,
                center_id=center.id,
                external_id=f"task:{task_id}",
                name=name,
                power_state=PowerState.BUILDING.value,
                availability=Availability.UNAVAILABLE.value,
                deletable=bool(params.get("deletable", True)),
                attributes={"meta.deskbroker_pool": pool.id},
                driver_state={},
            )
        )
        rows.append({"pool_id": pool.id, "desktop_id": desktop_id})
        session.add(
            ProvisioningTask(
                id=task_id,
                tenant_id=pool.tenant_id,
                pool_id=pool.id,
                center_id=center.id,
                desktop_id=desktop_id,
                name=name,
                state=S.REQUESTED.value,
                request=params,
                next_step_at=now,
            )
        )
    pool.sequence_next = sequence
    session.flush()
    session.execute(insert(PoolMember), rows)
    events.append(
        session,
        "provision.requested",
        tenant_id=pool.tenant_id,
        actor="engine",
        pool_id=pool.id,
        detail={"count": count},
    )


def _mark_for_retirement(session: Session, pool_id: str, count: int) -> list[str]:
    """Pick free, deletable desktops without sessions; mark them so nobody claims them."""
    members = select(PoolMember.desktop_id).where(PoolMember.pool_id == pool_id)
    busy = select(SessionRow.desktop_id).where(
        SessionRow.state.in_([s.value for s in ACTIVE_SESSION_STATES])
    )
    picked = list(
        session.scalars(
            select(Desktop.id)
            .where(
                Desktop.id.in_(members),
                Desktop.assigned_user_id.is_(None),
                Desktop.deletable.is_(True),
                Desktop.power_state.in_(
                    (
                        PowerState.RUNNING.value,
                        PowerState.STOPPED.value,
                        PowerState.SUSPENDED.value,
                        PowerState.UNKNOWN.value,
                    )
                ),
                Desktop.id.not_in(busy),
            )
            .order_by(Desktop.power_state.desc(), Desktop.name.desc())
            .limit(count)
            .with_for_update(skip_locked=True)
        ).all()
    )
    if picked:
        session.execute(
            update(Desktop)
            .where(Desktop.id.in_(picked), Desktop.assigned_user_id.is_(None))
            .values(
                power_state=PowerState.DELETING.value, availability=Availability.UNAVAILABLE.value
            )
            .execution_options(synchronize_session=False)
        )
    return picked


def _retire(
    ctx: BrokerContext, drivers: DriverCache, center_id: str, desktop_ids: list[str]
) -> None:
    with ctx.db.read() as session:
        center = session.get(Center, center_id)
        rows = session.scalars(select(Desktop).where(Desktop.id.in_(desktop_ids))).all()
        machines = [(d.id, d.tenant_id, _machine_of(d)) for d in rows]
    if center is None:
        return
    driver = drivers.get(center)
    for desktop_id, tenant_id, machine in machines:
        try:
            driver.terminate(machine)
        except CenterError as exc:
            with ctx.db.write() as session:
                events.append(
                    session,
                    "retire.failed",
                    tenant_id=tenant_id,
                    actor="engine",
                    desktop_id=desktop_id,
                    detail={"error": exc.detail},
                )
            continue
        with ctx.db.write() as session:
            desktop = session.get(Desktop, desktop_id)
            if desktop is not None:
                session.delete(desktop)
            events.append(
                session,
                "retire",
                tenant_id=tenant_id,
                actor="engine",
                desktop_id=desktop_id,
                detail={"name": machine.name},
            )


def _machine_of(desktop: Desktop) -> MachineInfo:
    return MachineInfo(
        external_id=desktop.external_id,
        name=desktop.name,
        address=desktop.address,
        driver_state=dict(desktop.driver_state or {}),
    )


def _request_of(task: ProvisioningTask) -> ProvisionRequest:
    params = task.request or {}
    return ProvisionRequest(
        name=task.name,
        image=params.get("image"),
        flavor=params.get("flavor"),
        availability_zone=params.get("availability_zone"),
        network=params.get("network"),
        floating_ip=bool(params.get("floating_ip")),
        security_groups=tuple(params.get("security_groups") or ()),
        user_data=params.get("user_data") or "",
        metadata={
            **{str(k): str(v) for k, v in (params.get("metadata") or {}).items()},
            "deskbroker_pool": task.pool_id or "",
            "deskbroker_desktop": task.desktop_id or "",
            "deskbroker_task": task.id,
        },
        tags=(task_tag(task.id),),
    )


class TaskStep:
    """One step of one task, run by an engine worker holding the task's lease."""

    def __init__(self, ctx: BrokerContext, drivers: DriverCache, task_id: str, owner: str) -> None:
        self.ctx = ctx
        self.drivers = drivers
        self.task_id = task_id
        self.owner = owner
        self.watcher: BuildWatcher | None = None
        self.state = S.REQUESTED

    def _save(
        self,
        state: S | None = None,
        *,
        delay_s: float | None = None,
        also: Callable[[Session], None] | None = None,
        **values: Any,
    ) -> None:
        """Persist the outcome of this step (and ``also`` in the same transaction), and
        let go of the lease."""
        if delay_s is None:
            delay_s = self.ctx.settings.provision_poll_s
        if state is not None:
            # We hold the lease, so the state read at the start of the step still holds.
            values["state"] = transition(PROVISIONING_TRANSITIONS, self.state, state).value
            values["step_started_at"] = utcnow()
        with self.ctx.db.write() as session:
            if also is not None:
                also(session)
            leases.release(
                session,
                ProvisioningTask,
                self.task_id,
                self.owner,
                next_step_at=utcnow() + timedelta(seconds=delay_s),
                **values,
            )

    def run(self, now: datetime) -> None:
        with self.ctx.db.read() as session:
            task = session.get(ProvisioningTask, self.task_id)
        center = self.drivers.center(task.center_id) if task else None
        if task is None or center is None or task.state not in OPEN_STATES:
            return
        self.state = S(task.state)
        driver = self.drivers.get(center)
        self.watcher = self.drivers.watcher(center)
        try:
            match S(task.state):
                case S.REQUESTED:
                    self._create(task, center, driver)
                case S.CREATING:
                    self._resume_create(task, driver)
                case S.WAITING:
                    self._wait(task, center, driver, now)
                case S.ADDRESSING:
                    self._address(task, driver)
        except QuotaExceeded as exc:
            self._quota(task, exc.detail)
        except CenterError as exc:
            self._fail(task, driver, exc.detail)
        except Exception as exc:  # a driver bug must not wedge the task forever
            self._fail(task, driver, f"unexpected error: {exc}")

    def _create(self, task: ProvisioningTask, center: Center, driver: CenterDriver) -> None:
        driver.require(Capability.PROVISION)
        limit = int(getattr(driver.params, "max_in_flight", 20))
        with self.ctx.db.write() as session:
            in_flight = (
                session.scalar(
                    select(func.count())
                    .select_from(ProvisioningTask)
                    .where(
                        ProvisioningTask.center_id == center.id,
                        ProvisioningTask.state.in_(IN_FLIGHT_STATES),
                    )
                )
                or 0
            )
            if in_flight >= limit:
                leases.release(
                    session,
                    ProvisioningTask,
                    task.id,
                    self.owner,
                    next_step_at=utcnow() + timedelta(seconds=self.ctx.settings.provision_poll_s),
                )
                return
            # Persist the intent before the call: a crash from here on is resumed by tag.
            session.execute(
                update(ProvisioningTask)
                .where(ProvisioningTask.id == task.id)
                .values(state=S.CREATING.value, step_started_at=utcnow())
            )
        self.state = S.CREATING
        if task.attempts:
            # An earlier attempt may have reached the cloud before it failed: adopt it.
            found = driver.find_tagged(task_tag(task.id))
            if found:
                self._created(task, found[0].external_id)
                return
        if self.watcher is not None:
            self.watcher.start_cursor()
        external_id = driver.create(_request_of(task))
        self._created(task, external_id)

    def _created(self, task: ProvisioningTask, external_id: str) -> None:
        def record(session: Session) -> None:
            session.execute(
                update(Desktop).where(Desktop.id == task.desktop_id).values(external_id=external_id)
            )

        # First look when builds here usually finish, then every poll interval.
        # The watcher wakes the build when it finishes; the first look is a safety net.
        self._save(S.WAITING, delay_s=self._next_look(False), also=record, external_id=external_id)

    def _resume_create(self, task: ProvisioningTask, driver: CenterDriver) -> None:
        found = driver.find_tagged(task_tag(task.id))
        if not found:
            self._back_to_requested(task)
            return
        keep, *extra = sorted(found, key=lambda m: m.external_id)
        for duplicate in extra:
            driver.terminate(duplicate)
        self._created(task, keep.external_id)

    def _back_to_requested(self, task: ProvisioningTask) -> None:
        # creating → requested is not a forward step; it undoes one that never reached
        # the cloud, so it is written directly rather than through the table.
        with self.ctx.db.write() as session:
            leases.release(
                session,
                ProvisioningTask,
                task.id,
                self.owner,
                state=S.REQUESTED.value,
                next_step_at=utcnow(),
            )

    def _wait(
        self, task: ProvisioningTask, center: Center, driver: CenterDriver, now: datetime
    ) -> None:
        started = task.step_started_at or now
        if started.tzinfo is None:
            started = started.replace(tzinfo=UTC)
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
        if machine is not None and machine.attributes.get("gone"):
            raise CenterError("the instance disappeared while it was being built")
        if machine is not None and machine.power_state is PowerState.RUNNING:
            if self.watcher is not None:
                self.watcher.learned(waited)
            if (task.request or {}).get("floating_ip"):
                self._save(S.ADDRESSING, delay_s=0)
            else:
                self._finish(task, machine, machine.address)
            return
        if machine is not None and machine.power_state is PowerState.ERROR:
            fault = machine.attributes.get("fault") or "the cloud reported ERROR"
            raise CenterError(f"build failed: {fault}")
        timeout = float(getattr(driver.params, "build_timeout_s", 900.0))
        if waited > timeout:
            raise CenterError(f"the instance stayed in BUILD for more than {timeout:.0f} s")
        self._save(delay_s=self._next_look(blind))

    def _next_look(self, blind: bool) -> float:
        """A watched build is woken when it finishes; this is only the safety net."""
        poll = self.ctx.settings.provision_poll_s
        if blind or self.watcher is None or not self.watcher.can_watch:
            return poll
        expected = self.watcher.expected_build_s or 0.0
        return max(poll, min(30.0, expected))

    def _address(self, task: ProvisioningTask, driver: CenterDriver) -> None:
        address = driver.attach_address(task.external_id or "", _request_of(task))
        self._finish(task, driver.machine(task.external_id or ""), address)

    def _finish(self, task: ProvisioningTask, machine: MachineInfo | None, address: str) -> None:
        """The desktop is built and reachable: hand it to the pool."""
        start_unavailable = bool((task.request or {}).get("start_unavailable"))
        with self.ctx.db.write() as session:
            desktop = session.get(Desktop, task.desktop_id) if task.desktop_id else None
            if desktop is not None:
                desktop.address = address
                desktop.power_state = PowerState.RUNNING.value
                desktop.availability = (
                    Availability.UNAVAILABLE.value
                    if start_unavailable
                    else Availability.AVAILABLE.value
                )
                if machine is not None:
                    desktop.attributes = {
                        **dict(machine.attributes),
                        "meta.deskbroker_pool": task.pool_id,
                    }
                    desktop.driver_state = dict(machine.driver_state)
            events.append(
                session,
                "provision.ready",
                tenant_id=task.tenant_id,
                actor="engine",
                desktop_id=task.desktop_id,
                pool_id=task.pool_id,
                detail={"name": task.name, "address": address, "attempts": task.attempts + 1},
            )
            if task.pool_id:
                # A build that got through clears a quota or failure status.
                session.execute(
                    update(Pool).where(Pool.id == task.pool_id).values(status="ok", last_error="")
                )
            if task.desktop_id:
                membership.refresh_desktops(session, task.tenant_id, [task.desktop_id])
            serve_queues(session, task.tenant_id)
        self._save(S.READY, delay_s=0)

    def _quota(self, task: ProvisioningTask, words: str) -> None:
        with self.ctx.db.write() as session:
            if task.pool_id:
                session.execute(
                    update(Pool)
                    .where(Pool.id == task.pool_id)
                    .values(status="quota", last_error=words)
                )
            leases.release(
                session,
                ProvisioningTask,
                task.id,
                self.owner,
                state=S.REQUESTED.value,
                last_error=words,
                next_step_at=utcnow() + timedelta(seconds=self.ctx.settings.quota_backoff_s),
            )

    def _fail(self, task: ProvisioningTask, driver: CenterDriver, reason: str) -> None:
        """A failed attempt: clean up the instance, retry with backoff, then quarantine."""
        attempts = task.attempts + 1
        deletable = bool((task.request or {}).get("deletable", True))
        cleaned = task.external_id is None
        if task.external_id and deletable:
            try:
                driver.terminate(MachineInfo(external_id=task.external_id, name=task.name))
                cleaned = True
            except CenterError:
                cleaned = False
        with self.ctx.db.write() as session:
            if attempts < MAX_ATTEMPTS and cleaned:
                session.execute(
                    update(Desktop)
                    .where(Desktop.id == task.desktop_id)
                    .values(external_id=f"task:{task.id}")
                )
                leases.release(
                    session,
                    ProvisioningTask,
                    task.id,
                    self.owner,
                    state=S.REQUESTED.value,
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
                return
            desktop = session.get(Desktop, task.desktop_id) if task.desktop_id else None
            if desktop is not None:
                if cleaned:
                    session.delete(desktop)
                else:
                    # The instance is still there (not ours to delete): quarantine it.
                    desktop.power_state = PowerState.ERROR.value
                    desktop.availability = Availability.UNAVAILABLE.value
                    desktop.attributes = {
                        **dict(desktop.attributes or {}),
                        "provisioning_error": reason,
                    }
            if task.pool_id:
                session.execute(
                    update(Pool)
                    .where(Pool.id == task.pool_id)
                    .values(status="error", last_error=f"a build failed {attempts} times: {reason}")
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
            leases.release(
                session,
                ProvisioningTask,
                task.id,
                self.owner,
                state=S.FAILED.value,
                attempts=attempts,
                last_error=reason,
                desktop_id=None if cleaned else task.desktop_id,
            )


def advance_task(
    ctx: BrokerContext, drivers: DriverCache, task_id: str, owner: str, now: datetime
) -> None:
    """Run one step of one leased provisioning task."""
    TaskStep(ctx, drivers, task_id, owner).run(now)

"""Pools that provision themselves.

``reconcile_pool`` turns a pool's targets into provisioning tasks (or retires surplus
desktops); ``builds`` moves each task through
``requested → creating → waiting → addressing → ready | failed``, persisting each step.
"""

from __future__ import annotations

import secrets as random_tokens
from datetime import datetime
from typing import Any

from deskbroker.domain import tags as name_tags
from deskbroker.domain.provisioning import (
    PoolCounts,
    Provisioning,
    Targets,
    targets,
    to_create,
    to_retire,
    unwanted,
)
from deskbroker.domain.states import Availability, PowerState
from deskbroker.domain.timestamps import aware
from deskbroker.engine import spread, volumes
from deskbroker.engine.drivers import DriverCache
from deskbroker.services import quotas
from deskbroker.services.context import BrokerContext
from deskbroker.store import events, jobs
from deskbroker.store import provisioning as store
from deskbroker.store.cancellations import cancel_unstarted
from deskbroker.store.db import Unit
from deskbroker.store.jobs import JobKind
from deskbroker.store.tables import Center, Pool, Tenant, new_id, utcnow
from deskbroker.store.tasks import S


def pool_counts(session: Unit, pool_id: str, *, starts_unavailable: bool = False) -> PoolCounts:
    """The pool's desktops by what matters to provisioning (``store.provisioning``)."""
    return store.pool_counts(session, pool_id, starts_unavailable=starts_unavailable)


def builds_unavailable(stored: dict[str, Any] | None) -> bool:
    """Whether the pool builds its desktops unavailable (``start_unavailable``), so that
    a finished one waiting for an administrator counts as unassigned. The provisioner and
    the statistics sampler both ask this: a chart shows what the provisioner counted."""
    provisioning = Provisioning.from_stored(stored)
    return provisioning.enabled and provisioning.parameters.start_unavailable


def reconcile_pool(ctx: BrokerContext, drivers: DriverCache, pool_id: str, now: datetime) -> str:
    """Bring one pool towards its targets; returns the pool's status in words."""
    retired = 0
    with ctx.db.write() as session:
        pool = session.get(Pool, pool_id)
        provisioning = Provisioning.from_stored(pool.provisioning) if pool else None
        if pool is None or provisioning is None or not provisioning.enabled:
            return "provisioning is off"
        centers = [
            c
            for c in (session.get(Center, i) for i in provisioning.build_centers(pool.center_ids))
            if c is not None
        ]
        if not centers:
            pool.status, pool.last_error = "error", "no center to provision in"
            return pool.last_error
        center = centers[0]
        # Schedule windows are read in the pool's time zone by ``targets`` itself.
        limits = targets(provisioning, now)
        counts = pool_counts(
            session, pool.id, starts_unavailable=builds_unavailable(pool.provisioning)
        )
        paused_s = builds_paused_s(pool, now)
        wanted = 0 if paused_s else to_create(limits, counts)
        # The tenant's desktop quota spans all its pools: lock, count, build, commit.
        tenant = quotas.desktop_room(session, pool.tenant_id)
        create = wanted if tenant.room is None else min(wanted, tenant.room)
        placed = 0
        if create:
            for where, count in spread.plan_builds(
                session, pool, provisioning, centers, create, now
            ):
                _request(session, pool, where, provisioning, count)
                placed += count
        # Builds not yet in the cloud that the pool no longer wants go first: cancelled,
        # they cost nothing, where a built desktop would have to be retired.
        cancelled = cancel_unstarted(
            session,
            pool_id=pool.id,
            tenant_id=pool.tenant_id,
            limit=unwanted(limits, counts),
            reason="the pool's targets dropped",
            now=now,
        )
        surplus = to_retire(limits, counts) - len(cancelled)
        if surplus > 0:
            retired = _retire(session, pool, surplus, now, centers)
        words = _status_words(limits, counts, placed, retired)
        if placed < create:
            words += f"; {create - placed} not requested: {spread.full_words(session, centers)}"
        if cancelled:
            words += f"; {len(cancelled)} unstarted builds cancelled"
        if tenant.limit is not None:
            words += f"; {tenant.words(tenant.used + create)}"
            if create < wanted:
                words += f", so {wanted - create} fewer built than the pool wants"
        if paused_s:
            words += (
                f"; builds paused for {paused_s:.0f} s after {pool.build_failures} failed "
                f"in a row, first: {pool.last_error}"
            )
        pool.status_message = words
    size = provisioning.parameters.data_volume_gb
    if size and center is not None:
        volumes.follow_users(ctx, drivers, pool_id, center, size)
    return words


def builds_paused_s(pool: Pool, now: datetime) -> float:
    """Seconds the pool still waits before building again after failed builds."""
    if pool.builds_resume_at is None:
        return 0.0
    return max(0.0, (aware(pool.builds_resume_at) - now).total_seconds())


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
    session: Unit, pool: Pool, center: Center, provisioning: Provisioning, count: int
) -> None:
    """Add ``count`` desktops in building state and their tasks.

    A pool builds ahead of whoever will hold the desktop (the queue is served by claim
    order when a build finishes), so ``{USER}`` has no value here and renders as nothing;
    ``tags.render`` never lets that leave an empty name."""
    params = provisioning.parameters
    # The task keeps the parameters as the administrator set them (the center's part
    # too, that center's own over the shared ones): the build hands them to the
    # driver, which reads its own.
    request = provisioning.request_for(center.id)
    template = params.name_template
    sequence = pool.sequence_next or params.sequence_start
    tenant = session.get(Tenant, pool.tenant_id)
    members: list[dict[str, Any]] = []
    desktops: list[dict[str, Any]] = []
    tasks: list[dict[str, Any]] = []
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
        desktops.append(
            {
                "id": desktop_id,
                "tenant_id": pool.tenant_id,
                "center_id": center.id,
                "external_id": f"task:{task_id}",
                "name": name,
                "power_state": PowerState.BUILDING.value,
                "availability": Availability.UNAVAILABLE.value,
                "deletable": params.deletable,
                "attributes": {"meta.deskbroker_pool": pool.id},
                "driver_state": {},
            }
        )
        members.append({"pool_id": pool.id, "desktop_id": desktop_id})
        tasks.append(
            {
                "id": task_id,
                "tenant_id": pool.tenant_id,
                "pool_id": pool.id,
                "center_id": center.id,
                "desktop_id": desktop_id,
                "name": name,
                "state": S.REQUESTED.value,
                "request": request,
                "next_step_at": now,
            }
        )
    pool.sequence_next = sequence
    # A batch of a thousand is a statement per table, not a thousand ORM objects.
    store.add_builds(session, desktops, tasks, members)
    events.append(
        session,
        "provision.requested",
        tenant_id=pool.tenant_id,
        actor="engine",
        pool_id=pool.id,
        detail={"count": count},
    )


# Power states a free desktop may be retired from (marked ``deleting``).
_RETIRABLE = (PowerState.RUNNING, PowerState.STOPPED, PowerState.SUSPENDED, PowerState.UNKNOWN)


def _retire(session: Unit, pool: Pool, count: int, now: datetime, centers: list[Center]) -> int:
    """Mark up to ``count`` free, deletable desktops for removal, so nobody claims them;
    each center's ``remove_desktops`` job terminates them and drops their rows once the
    center confirms, retrying a center that fails (with its turns: the pool's job itself
    calls no cloud)."""
    picked = store.mark_for_retirement(
        session, pool.id, count, _RETIRABLE, now, [c.id for c in centers]
    )
    for desktop_id, _, name in picked:
        events.append(
            session,
            "retire",
            tenant_id=pool.tenant_id,
            actor="engine",
            desktop_id=desktop_id,
            pool_id=pool.id,
            detail={"name": name},
        )
    for center_id in sorted({center_id for _, center_id, _ in picked}):
        jobs.poke(session, JobKind.REMOVE_DESKTOPS, center_id)
    return len(picked)

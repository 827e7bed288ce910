"""Built desktops handed to their pools: one transaction for all the builds a center's
watcher saw finish in one listing (or for the one build a step saw finish)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from deskbroker.centers.base import MachineInfo
from deskbroker.domain.states import (
    AVAILABILITY_TRANSITIONS,
    POWER_TRANSITIONS,
    Availability,
    PowerState,
    from_any,
)
from deskbroker.domain.timestamps import aware
from deskbroker.engine.requests import request_of
from deskbroker.engine.watch import BuildWatcher
from deskbroker.services.context import BrokerContext
from deskbroker.services.queues import serve_queues
from deskbroker.store import handover as store
from deskbroker.store import leases, membership
from deskbroker.store.tables import utcnow
from deskbroker.store.tasks import S, TaskRow, claim_builds

# What a built desktop's power state moves from at handover.
_BUILT_FROM = (PowerState.BUILDING,)


def hand_over(unit: leases.Unit, built: Sequence[tuple[TaskRow, MachineInfo | None, str]]) -> None:
    """Built and reachable desktops join their pools: desktop rows, events, pool
    status, membership and waiting users, a statement each for the whole batch."""
    if not built:
        return
    # Before the desktops' rows are written: an administrator's change of one of them,
    # holding a tenant's membership, would wait for this unit while it waited for the
    # membership (``membership.hold``). In one order, so two hand-overs cannot cross.
    for tenant_id in sorted({task.tenant_id for task, _, _ in built}):
        membership.hold(unit, tenant_id)
    with_machine: list[dict[str, Any]] = []
    bare: list[dict[str, Any]] = []
    happened: list[dict[str, Any]] = []
    for task, machine, address in built:
        happened.append(
            {
                "tenant_id": task.tenant_id,
                "kind": "provision.ready",
                "actor": "engine",
                "user_id": None,
                "desktop_id": task.desktop_id,
                "pool_id": task.pool_id,
                "detail": {"name": task.name, "address": address, "attempts": task.attempts + 1},
            }
        )
        if not task.desktop_id:
            continue
        start_unavailable = bool((task.request or {}).get("start_unavailable"))
        values: dict[str, Any] = {
            "b_id": task.desktop_id,
            "address": address,
            # The desktop was made ``building`` with its task, and only the task moves it.
            "power_state": from_any(POWER_TRANSITIONS, PowerState.RUNNING, _BUILT_FROM).value,
            "availability": from_any(
                AVAILABILITY_TRANSITIONS,
                Availability.UNAVAILABLE if start_unavailable else Availability.AVAILABLE,
            ).value,
        }
        if machine is None or machine.partial:
            # Nothing known of it but its id (a cell that does not answer): the desktop
            # keeps its attributes until a scan sees the whole record.
            bare.append(values)
        else:
            values["attributes"] = {
                **dict(machine.attributes),
                "meta.deskbroker_pool": task.pool_id,
            }
            values["driver_state"] = dict(machine.driver_state)
            with_machine.append(values)
    # A build that got through clears its pool's quota or failure status.
    pool_ids = sorted({t.pool_id for t, _, _ in built if t.pool_id})
    store.record_built(unit, (with_machine, bare), happened, pool_ids)
    tenants: dict[str, list[str]] = {}
    for task, _, _ in built:
        ids = tenants.setdefault(task.tenant_id, [])
        if task.desktop_id:
            ids.append(task.desktop_id)
    for tenant_id, desktop_ids in tenants.items():
        if desktop_ids:
            membership.refresh_desktops(unit, tenant_id, desktop_ids)
        # Hand the new desktops to users waiting in the tenant's queues, if any.
        store.serve_waiting(unit, tenant_id, serve_queues)


@dataclass
class Refill:
    """Requested builds to claim in the same transaction, when builds finish or slots
    are free: the center's in-flight ``limit``, at most ``most``, leased by ``owner``."""

    limit: int
    most: int
    owner: str
    now: datetime
    ttl_s: float


def finish_and_refill(
    ctx: BrokerContext,
    watcher: BuildWatcher,
    center_id: str,
    refill: Refill | None,
    *,
    tenant_id: str,
) -> tuple[int, list[TaskRow]]:
    """In one transaction, the builds of a center its watcher saw finish, and the builds
    to start in the slots they leave (``refill``). The running ones (with no address to
    attach) go straight to ``ready`` together; the rest (failed, gone, needing an
    address) are woken for a step. Returns how many became ready, and the builds claimed.

    A build whose task another worker holds is offered again at the next listing; one
    whose task is not known yet (its creation is being recorded) too."""
    finished = watcher.finished()
    if not finished and refill is None:
        return 0, []
    now = utcnow()
    ready: list[TaskRow] = []
    wake: list[TaskRow] = []
    moot: set[str] = set()
    matched: set[str] = set()
    with ctx.db.connect_write() as conn:
        if finished:
            # Before the tasks' rows are locked: an administrator's delete of a pool holds
            # the tenant's membership, then cancels the pool's builds (their rows); the
            # hand-over that follows needs the membership (``membership.hold``). A
            # center's builds are all of its tenant.
            membership.hold(conn, tenant_id)
            for row, lease_expires_at in store.watched(conn, center_id, list(finished)):
                leased = lease_expires_at is not None and aware(lease_expires_at) >= now
                machine = finished[row.external_id or ""]
                matched.add(row.external_id or "")
                if row.state != S.WAITING.value:
                    moot.add(row.external_id or "")
                elif leased:
                    continue  # a step has it
                elif (
                    machine.power_state is PowerState.RUNNING
                    and not machine.gone
                    and not watcher.driver.needs_address(request_of(row))
                ):
                    ready.append(row)
                else:
                    wake.append(row)
        if ready:
            # Locked by the read on PostgreSQL, by the one writer on SQLite; checked
            # again all the same: a task a step holds is left to it.
            ids = [r.id for r in ready]
            taken = store.mark_ready(conn, ids, now)
            ready = [r for r in ready if r.id in taken]
            hand_over(
                conn,
                [
                    (r, finished[r.external_id or ""], finished[r.external_id or ""].address)
                    for r in ready
                ],
            )
        if wake:
            store.wake(conn, [r.id for r in wake], now)
        claimed: list[TaskRow] = []
        if refill is not None:
            claimed = claim_builds(
                conn,
                center_id,
                limit=refill.limit,
                most=refill.most,
                owner=refill.owner,
                now=refill.now,
                ttl_s=refill.ttl_s,
            )
    for row in ready:
        if row.step_started_at is not None:
            watcher.learned((now - aware(row.step_started_at)).total_seconds())
    unknown = set(finished) - matched
    watcher.settle(
        {r.external_id or "" for r in ready}, {r.external_id or "" for r in wake} | moot, unknown
    )
    return len(ready), claimed

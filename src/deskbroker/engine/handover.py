"""Built desktops handed to their pools: one transaction for all the builds a center's
watcher saw finish in one listing (or for the one build a step saw finish)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.orm import Session

from deskbroker.centers.base import MachineInfo
from deskbroker.domain.states import (
    AVAILABILITY_TRANSITIONS,
    POWER_TRANSITIONS,
    PROVISIONING_TRANSITIONS,
    Availability,
    PowerState,
    from_any,
    transition,
)
from deskbroker.engine.tasks import (
    DESKTOPS,
    EVENTS,
    POOLS,
    QUEUE,
    TASK_COLUMNS,
    TASKS,
    S,
    TaskRow,
    aware,
    claim_builds,
)
from deskbroker.engine.watch import BuildWatcher
from deskbroker.services.context import BrokerContext
from deskbroker.services.desktops import serve_queues
from deskbroker.store import leases, membership
from deskbroker.store.tables import utcnow

# What a built desktop's power state moves from at handover.
_BUILT_FROM = (PowerState.BUILDING,)

_WATCHED = (
    select(*TASK_COLUMNS, TASKS.c.lease_expires_at)
    .where(
        TASKS.c.center_id == bindparam("b_center"),
        TASKS.c.external_id.in_(bindparam("b_external", expanding=True)),
    )
    .with_for_update(skip_locked=True)
)
_READY = (
    update(TASKS)
    .where(
        TASKS.c.id.in_(bindparam("b_ids", expanding=True)),
        TASKS.c.state == S.WAITING.value,
        leases.lease_free(TASKS, bindparam("b_now", type_=TASKS.c.lease_expires_at.type)),
    )
    .values(
        state=transition(PROVISIONING_TRANSITIONS, S.WAITING, S.READY).value,
        step_started_at=bindparam("b_now"),
        next_step_at=bindparam("b_now"),
        lease_owner=None,
        lease_expires_at=None,
    )
    .returning(TASKS.c.id)
)
_WAKE = (
    update(TASKS)
    .where(TASKS.c.id.in_(bindparam("b_ids", expanding=True)), TASKS.c.state == S.WAITING.value)
    .values(next_step_at=bindparam("b_now"))
)


_DESKTOP_BY_ID = update(DESKTOPS).where(DESKTOPS.c.id == bindparam("b_id"))
_EVENT = insert(EVENTS)
_POOLS_OK = (
    update(POOLS)
    .where(
        POOLS.c.id.in_(bindparam("b_ids", expanding=True)),
        or_(POOLS.c.status != "ok", POOLS.c.last_error != "", POOLS.c.build_failures != 0),
    )
    .values(status="ok", last_error="", build_failures=0, builds_resume_at=None)
)
_ANYONE_WAITING = select(QUEUE.c.id).where(QUEUE.c.tenant_id == bindparam("b_tenant")).limit(1)


def hand_over(unit: leases.Unit, built: Sequence[tuple[TaskRow, MachineInfo | None, str]]) -> None:
    """Built and reachable desktops join their pools: desktop rows, events, pool
    status, membership and waiting users, a statement each for the whole batch."""
    if not built:
        return
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
        if machine is None:
            bare.append(values)
        else:
            values["attributes"] = {
                **dict(machine.attributes),
                "meta.deskbroker_pool": task.pool_id,
            }
            values["driver_state"] = dict(machine.driver_state)
            with_machine.append(values)
    for group in (with_machine, bare):
        if group:
            unit.execute(_DESKTOP_BY_ID, group)
    unit.execute(_EVENT, happened)
    pool_ids = sorted({t.pool_id for t, _, _ in built if t.pool_id})
    if pool_ids:
        # A build that got through clears a quota or failure status.
        unit.execute(_POOLS_OK, {"b_ids": pool_ids})
    tenants: dict[str, list[str]] = {}
    for task, _, _ in built:
        ids = tenants.setdefault(task.tenant_id, [])
        if task.desktop_id:
            ids.append(task.desktop_id)
    for tenant_id, desktop_ids in tenants.items():
        if desktop_ids:
            membership.refresh_desktops(unit, tenant_id, desktop_ids)
        _serve_waiting(unit, tenant_id)


def _serve_waiting(unit: leases.Unit, tenant_id: str) -> None:
    """Hand the new desktops to users waiting in the tenant's queues, if any."""
    if isinstance(unit, Session):
        serve_queues(unit, tenant_id)
        return
    if unit.execute(_ANYONE_WAITING, {"b_tenant": tenant_id}).first() is None:
        return  # the usual case, and one indexed read
    with Session(bind=unit) as session:  # joins the connection's transaction
        serve_queues(session, tenant_id)
        session.commit()


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
    ctx: BrokerContext, watcher: BuildWatcher, center_id: str, refill: Refill | None
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
            found = conn.execute(
                _WATCHED, {"b_center": center_id, "b_external": list(finished)}
            ).all()
            for raw in found:
                row = TaskRow(*raw[:-1])
                leased = raw[-1] is not None and aware(raw[-1]) >= now
                machine = finished[row.external_id or ""]
                matched.add(row.external_id or "")
                if row.state != S.WAITING.value:
                    moot.add(row.external_id or "")
                elif leased:
                    continue  # a step has it
                elif (
                    machine.power_state is PowerState.RUNNING
                    and not machine.attributes.get("gone")
                    and not (row.request or {}).get("floating_ip")
                ):
                    ready.append(row)
                else:
                    wake.append(row)
        if ready:
            # Locked by the read on PostgreSQL, by the one writer on SQLite; checked
            # again all the same: a task a step holds is left to it.
            ids = [r.id for r in ready]
            taken = set(conn.scalars(_READY, {"b_ids": ids, "b_now": now}).all())
            ready = [r for r in ready if r.id in taken]
            hand_over(
                conn,
                [
                    (r, finished[r.external_id or ""], finished[r.external_id or ""].address)
                    for r in ready
                ],
            )
        if wake:
            conn.execute(_WAKE, {"b_ids": [r.id for r in wake], "b_now": now})
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

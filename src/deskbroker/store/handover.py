"""The statements of handing built desktops to their pools (``engine/handover`` decides
which builds are ready; these write it), built once: the engine's hot path."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.orm import Session

from deskbroker.domain.states import PROVISIONING_TRANSITIONS, transition
from deskbroker.store import leases
from deskbroker.store.tasks import DESKTOPS, EVENTS, POOLS, QUEUE, TASK_COLUMNS, TASKS, S, TaskRow

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


def watched(
    unit: leases.Unit, center_id: str, external_ids: Sequence[str]
) -> list[tuple[TaskRow, datetime | None]]:
    """The tasks of a center's finished instances, locked (skipping locked ones), each
    with when its lease expires (``None``: no worker holds it)."""
    found = unit.execute(_WATCHED, {"b_center": center_id, "b_external": list(external_ids)})
    return [(TaskRow(*raw[:-1]), raw[-1]) for raw in found.all()]


def mark_ready(unit: leases.Unit, task_ids: Sequence[str], now: datetime) -> set[str]:
    """Move waiting, unleased tasks to ``ready``; returns the ids that moved."""
    return set(unit.scalars(_READY, {"b_ids": list(task_ids), "b_now": now}).all())


def wake(unit: leases.Unit, task_ids: Sequence[str], now: datetime) -> None:
    """Make waiting tasks due for a step now."""
    unit.execute(_WAKE, {"b_ids": list(task_ids), "b_now": now})


def record_built(
    unit: leases.Unit,
    desktop_groups: Sequence[Sequence[dict[str, Any]]],
    happened: Sequence[dict[str, Any]],
    pool_ids: Sequence[str],
) -> None:
    """Write built desktops (each group one executemany: its rows have the same keys,
    ``b_id`` the desktop's id), their events, and clear their pools' failure status."""
    for group in desktop_groups:
        if group:
            unit.execute(_DESKTOP_BY_ID, list(group))
    unit.execute(_EVENT, list(happened))
    if pool_ids:
        unit.execute(_POOLS_OK, {"b_ids": list(pool_ids)})


def serve_waiting(
    unit: leases.Unit, tenant_id: str, serve: Callable[[Session, str], object]
) -> None:
    """Run ``serve`` (the queue service) for a tenant inside ``unit``'s transaction. On a
    bare connection, only when someone waits: the usual answer is one indexed read."""
    if isinstance(unit, Session):
        serve(unit, tenant_id)
        return
    if unit.execute(_ANYONE_WAITING, {"b_tenant": tenant_id}).first() is None:
        return
    with Session(bind=unit) as session:  # joins the connection's transaction
        serve(session, tenant_id)
        session.commit()

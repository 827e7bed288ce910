"""The writes of a provisioning task's steps (``engine.builds``) beyond the lease's own
release: the intent recorded before the cloud is asked, the cloud's id once it answered,
what a pool learns from a build that failed or hit the cloud's quota, and what becomes of
a failed build's desktop."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, update

from deskbroker.domain.states import PowerState, power_state
from deskbroker.store import desktop_rows, leases
from deskbroker.store.db import Unit
from deskbroker.store.tables import Desktop, Pool
from deskbroker.store.tasks import DESKTOPS, POOLS, TASKS

_RECORD_EXTERNAL_ID = (
    update(DESKTOPS)
    .where(DESKTOPS.c.id == bindparam("b_desktop"))
    .values(external_id=bindparam("b_external"))
)
_CREATED = (
    update(TASKS)
    .where(TASKS.c.id == bindparam("b_task"), TASKS.c.lease_owner == bindparam("b_owner"))
    .values(
        lease_owner=None,
        lease_expires_at=None,
        state=bindparam("b_state"),
        step_started_at=bindparam("b_now"),
        next_step_at=bindparam("b_next"),
        external_id=bindparam("b_external"),
    )
)


def mark_creating(session: Unit, task_id: str, owner: str, state: str, now: datetime) -> None:
    """Persist the intent before the cloud is asked: a crash from here on is resumed by
    the task's tag. ``LeaseLost`` when ``owner`` no longer holds the task (nothing is
    asked of the cloud then)."""
    moved = session.execute(
        update(TASKS)
        .where(TASKS.c.id == task_id, TASKS.c.lease_owner == owner)
        .values(state=state, step_started_at=now)
    )
    if not moved.rowcount:  # type: ignore[attr-defined]
        raise leases.LeaseLost(TASKS, task_id)


def renew_to_create(
    session: Unit, task_id: str, owner: str, until: datetime, now: datetime
) -> None:
    """The lease renewed right before the cloud is asked for the instance, the moment
    kept as the step's start (a node taking the task over knows until when that create
    may land); ``LeaseLost`` when ``owner`` no longer holds the task."""
    renewed = session.execute(
        update(TASKS)
        .where(TASKS.c.id == task_id, TASKS.c.lease_owner == owner)
        .values(lease_expires_at=until, step_started_at=now)
    )
    if not renewed.rowcount:  # type: ignore[attr-defined]
        raise leases.LeaseLost(TASKS, task_id)


def record_created(
    conn: leases.Unit,
    *,
    task_id: str,
    owner: str,
    desktop_id: str | None,
    external_id: str,
    state: str,
    now: datetime,
    next_step_at: datetime,
) -> None:
    """The cloud has the build: its id on the task, moved to ``state`` with its lease let
    go, and on the desktop (so a scan meeting the instance knows it). ``LeaseLost``, and
    nothing written (the caller's unit rolls back), when ``owner`` no longer holds the
    task: the node that took it over finds the instance by the task's tag."""
    if desktop_id:
        # The desktop's row before the task's, as a center's delete takes them (its
        # desktops, then by the foreign key their tasks): in the other order the two
        # waited for each other on PostgreSQL and one was rolled back.
        conn.execute(_RECORD_EXTERNAL_ID, {"b_desktop": desktop_id, "b_external": external_id})
    moved = conn.execute(
        _CREATED,
        {
            "b_task": task_id,
            "b_owner": owner,
            "b_state": state,
            "b_now": now,
            "b_next": next_step_at,
            "b_external": external_id,
        },
    )
    if not moved.rowcount:  # type: ignore[attr-defined]
        raise leases.LeaseLost(TASKS, task_id)


def desktop_awaits_build(session: Unit, desktop_id: str, task_id: str) -> None:
    """The desktop's instance is gone (a failed attempt cleaned up): it waits for the
    task's next attempt, as a desktop being built does."""
    session.execute(
        update(DESKTOPS).where(DESKTOPS.c.id == desktop_id).values(external_id=f"task:{task_id}")
    )


def desktop_failed(session: Unit, desktop_id: str, reason: str, *, cleaned: bool) -> None:
    """The desktop of a build that failed for good: gone, when its instance is
    (``cleaned``); else quarantined, since the instance is still there and not the
    broker's to delete: in error, out of the claim, ``reason`` in its attributes."""
    desktop = session.get(Desktop, desktop_id)
    if desktop is None:
        return
    if cleaned:
        session.delete(desktop)
        return
    desktop_rows.take_out(desktop, power_state(desktop.power_state), PowerState.ERROR)
    desktop.attributes = {**dict(desktop.attributes or {}), "provisioning_error": reason}


def step_now(session: Unit, task_id: str, now: datetime) -> None:
    """The task's next step is due at once (its build moved to another center)."""
    session.execute(update(TASKS).where(TASKS.c.id == task_id).values(next_step_at=now))


def pool_over_quota(session: Unit, pool_id: str, words: str) -> None:
    """The cloud refused a build of the pool for its quota: the pool's status says so."""
    session.execute(
        update(POOLS).where(POOLS.c.id == pool_id).values(status="quota", last_error=words)
    )


def lock_pool(session: Unit, pool_id: str) -> Pool | None:
    """The pool's row, locked until the unit ends."""
    return session.get(Pool, pool_id, with_for_update=True)

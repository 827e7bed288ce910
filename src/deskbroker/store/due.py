"""The engine's own statements: what is due this tick (one read), and the leases a dead
incarnation of this broker left behind.

The tick's read is built once and run every tick: what is due (one row, ``center_id``
NULL), then one row per center with open builds: in flight, waiting on the cloud,
requested and due. One statement, so an idle tick costs a single read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, case, func, literal, null, select, union_all, update

from deskbroker.store import leases, tasks
from deskbroker.store.db import Unit
from deskbroker.store.tables import BrokerState, Job, ProvisioningTask, Timer, WebhookDelivery

STATE = leases.table_of(BrokerState)
JOBS = leases.table_of(Job)
TIMERS = leases.table_of(Timer)

_NOW = bindparam("now", type_=JOBS.c.next_run_at.type)
_TASK = tasks.TASKS.c


def _count_free(table: Any, *where: Any) -> Any:
    free = leases.lease_free(table, _NOW)
    return select(func.count()).select_from(table).where(free, *where).scalar_subquery()


_DUE = union_all(
    select(
        null().label("center_id"),
        select(STATE.c.config_version).where(STATE.c.id == 1).scalar_subquery(),
        _count_free(JOBS, JOBS.c.next_run_at <= _NOW),
        _count_free(TIMERS, TIMERS.c.due_at <= _NOW),
        _count_free(
            tasks.TASKS, _TASK.next_step_at <= _NOW, _TASK.state.in_(tasks.IN_FLIGHT_STATES)
        ),
    ),
    select(
        _TASK.center_id,
        func.count().filter(_TASK.state.in_(tasks.IN_FLIGHT_STATES)),
        func.count().filter(_TASK.state == tasks.S.WAITING.value),
        func.count().filter(
            _TASK.state == tasks.S.REQUESTED.value,
            _TASK.next_step_at <= _NOW,
            leases.lease_free(tasks.TASKS, _NOW),
        ),
        literal(0),
    )
    .where(_TASK.state.in_(tasks.OPEN_STATES))
    .group_by(_TASK.center_id),
)


@dataclass(frozen=True)
class CenterWork:
    """A center's open builds: in flight, waiting on the cloud, requested and due."""

    center_id: str
    in_flight: int
    waiting: int
    requested: int


@dataclass(frozen=True)
class Due:
    """What there is to do: the configuration version, counts of unleased due jobs,
    timers and build steps, and the open builds per center."""

    version: int
    jobs: int
    timers: int
    steps: int
    centers: list[CenterWork]


def read_due(conn: leases.Unit, now: datetime) -> Due:
    """What is due at ``now``, in one read."""
    rows = conn.execute(_DUE, {"now": now}).all()
    due = Due(0, 0, 0, 0, [])
    centers: list[CenterWork] = []
    for row in rows:
        if row[0] is None:
            version, jobs, timers, steps = (int(v or 0) for v in row[1:5])
            due = Due(version, jobs, timers, steps, centers)
        else:
            centers.append(CenterWork(str(row[0]), int(row[1]), int(row[2]), int(row[3])))
    return due


def free_leases_of(session: Unit, broker_id: str) -> None:
    """Free every job, timer, task and webhook delivery lease held by any incarnation
    of ``broker_id``."""
    for model in (Job, Timer, ProvisioningTask, WebhookDelivery):
        session.execute(
            update(model)
            .where(model.lease_owner.like(f"{broker_id}:%"))
            .values(lease_owner=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )


def unless_asked(seen: datetime, then: datetime) -> Any:
    """A job's next run at ``then``, unless someone asked for an earlier one while this
    run was out (an admin's "scan now" moves ``next_run_at`` on a leased job, after
    ``seen``, the value the run was claimed with): then that. A value for
    ``leases.release``."""
    column = JOBS.c.next_run_at
    earlier, later = literal(seen, column.type), literal(then, column.type)
    return case(((column > earlier) & (column < later), column), else_=later)

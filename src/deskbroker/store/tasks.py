"""Provisioning tasks: their states, the row a step works on, and how they are claimed.

A task moves ``requested → creating → waiting → addressing → ready | failed``, persisted
after every step (``builds``). This is the engine's hot path, so it speaks Core SQL on
rows read once: a build is claimed and moved to ``creating`` in one statement that
returns everything its steps need, within the center's in-flight limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from deskbroker.domain.states import PROVISIONING_TRANSITIONS, ProvisioningState, transition
from deskbroker.store import advisory, leases
from deskbroker.store.tables import Desktop, Event, Pool, ProvisioningTask, QueueEntry, utcnow

S = ProvisioningState
OPEN_STATES = (S.REQUESTED.value, S.CREATING.value, S.WAITING.value, S.ADDRESSING.value)
IN_FLIGHT_STATES = (S.CREATING.value, S.WAITING.value, S.ADDRESSING.value)
MAX_ATTEMPTS = 3

TASKS = leases.table_of(ProvisioningTask)
DESKTOPS = leases.table_of(Desktop)
POOLS = leases.table_of(Pool)
EVENTS = leases.table_of(Event)
QUEUE = leases.table_of(QueueEntry)


def task_tag(task_id: str) -> str:
    return f"task-{task_id}"


@dataclass(frozen=True, slots=True)
class TaskRow:
    """What a step needs of its task, read with the lease (fields in column order)."""

    id: str
    tenant_id: str
    pool_id: str | None
    center_id: str
    desktop_id: str | None
    name: str
    state: str
    external_id: str | None
    request: dict[str, Any]
    attempts: int
    step_started_at: datetime | None


TASK_COLUMNS = tuple(TASKS.c[name] for name in TaskRow.__slots__)


def rows_of(result: Sequence[Any]) -> list[TaskRow]:
    return [TaskRow(*row) for row in result]


# The statements of the hot path, built once: building and keying a statement costs
# more than SQLite takes to run it.
_CLAIM_STEPS = leases.claim_statement(
    TASKS,
    returning=TASK_COLUMNS,
    due_column=TASKS.c.next_step_at,
    where=(TASKS.c.state.in_(IN_FLIGHT_STATES),),
)
_CLAIM_BUILDS = leases.claim_statement(
    TASKS,
    returning=TASK_COLUMNS,
    due_column=TASKS.c.next_step_at,
    where=(TASKS.c.center_id == bindparam("b_center"), TASKS.c.state == S.REQUESTED.value),
    values={
        "state": transition(PROVISIONING_TRANSITIONS, S.REQUESTED, S.CREATING).value,
        "step_started_at": bindparam("b_started"),
    },
)
_IN_FLIGHT = (
    select(func.count())
    .select_from(TASKS)
    .where(TASKS.c.center_id == bindparam("b_center"), TASKS.c.state.in_(IN_FLIGHT_STATES))
)


def read_task(session: Session, task_id: str) -> TaskRow | None:
    found = rows_of(session.execute(select(*TASK_COLUMNS).where(TASKS.c.id == task_id)).all())
    return found[0] if found else None


def claim_steps(
    conn: leases.Unit, *, owner: str, now: datetime, ttl_s: float, limit: int
) -> list[TaskRow]:
    """Lease due steps of builds in flight (a safety-net look, a resumed creation, an
    address to attach) and return their rows."""
    params = leases.claim_params(owner=owner, now=now, ttl_s=ttl_s, limit=limit)
    return rows_of(conn.execute(_CLAIM_STEPS, params).all())


def lock_center(conn: leases.Unit, center_id: str) -> None:
    """On PostgreSQL, serialise the brokers that count and claim one center's builds
    (SQLite's single writer already does): the in-flight limit holds for a cluster."""
    advisory.xact_lock(conn, center_id)


def in_flight(conn: leases.Unit, center_id: str) -> int:
    return int(conn.execute(_IN_FLIGHT, {"b_center": center_id}).scalar() or 0)


def claim_builds(
    conn: leases.Unit,
    center_id: str,
    *,
    limit: int,
    most: int,
    owner: str,
    now: datetime,
    ttl_s: float,
) -> list[TaskRow]:
    """Lease requested builds of a center, as many as its in-flight ``limit`` leaves
    room for (and at most ``most``), and persist the intent to create them: they are
    ``creating`` from here on, so a crash before or after the cloud call is resumed by
    looking for the task's tag."""
    lock_center(conn, center_id)
    room = min(limit - in_flight(conn, center_id), most)
    if room <= 0:
        return []
    params = leases.claim_params(owner=owner, now=now, ttl_s=ttl_s, limit=room)
    params.update(b_center=center_id, b_started=utcnow())
    return rows_of(conn.execute(_CLAIM_BUILDS, params).all())


def last_error_of(session: Session, task_id: str) -> str:
    """The task's last error (off the hot path: a failed attempt that was waited for)."""
    found = session.execute(select(TASKS.c.last_error).where(TASKS.c.id == task_id)).scalar()
    return str(found or "")

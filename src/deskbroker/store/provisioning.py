"""The statements of a pool's provisioning: its desktops counted by what matters to it,
builds added in bulk, and free desktops picked and marked for retirement."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update

from deskbroker.domain.provisioning import PoolCounts
from deskbroker.domain.states import (
    ACTIVE_SESSION_STATES,
    AVAILABILITY_TRANSITIONS,
    POWER_TRANSITIONS,
    Availability,
    PowerState,
    from_any,
)
from deskbroker.store.claims import coming_free, free_desktop
from deskbroker.store.db import Unit
from deskbroker.store.tables import (
    Desktop,
    PoolMember,
    ProvisioningTask,
    QueueEntry,
    SessionRow,
)
from deskbroker.store.tasks import DESKTOPS, OPEN_STATES, TASKS


def pool_counts(session: Unit, pool_id: str, *, starts_unavailable: bool = False) -> PoolCounts:
    """The pool's desktops by what matters to provisioning.

    In a pool that builds its desktops unavailable (``start_unavailable``: an administrator
    makes each one available), a finished, unassigned desktop waiting for that counts as
    unassigned; otherwise every reconcile would build more, up to the pool's maximum."""
    members = select(PoolMember.desktop_id).where(PoolMember.pool_id == pool_id)
    gone = (PowerState.DELETED.value, PowerState.DELETING.value)
    total = (
        select(func.count())
        .select_from(Desktop)
        .where(Desktop.id.in_(members), Desktop.power_state.not_in(gone))
        .scalar_subquery()
    )
    free = (
        select(func.count())
        .select_from(Desktop)
        .where(
            Desktop.id.in_(members),
            free_desktop() | coming_free(starts_unavailable=starts_unavailable),
        )
        .scalar_subquery()
    )
    in_flight = (
        select(func.count())
        .select_from(ProvisioningTask)
        .where(ProvisioningTask.pool_id == pool_id, ProvisioningTask.state.in_(OPEN_STATES))
        .scalar_subquery()
    )
    waiting = (
        select(func.count())
        .select_from(QueueEntry)
        .where(QueueEntry.pool_id == pool_id)
        .scalar_subquery()
    )
    # One statement, so the four counts are of one moment: on PostgreSQL each statement
    # sees what had committed when it began, and a hand-over that served a waiting user
    # between two reads made the counts disagree (one build too few wanted).
    row = session.execute(select(total, free, waiting, in_flight)).one()
    return PoolCounts(*(int(n or 0) for n in row))


def add_builds(
    session: Unit,
    desktops: Sequence[dict[str, Any]],
    tasks: Sequence[dict[str, Any]],
    members: Sequence[dict[str, Any]],
) -> None:
    """Desktops in building state, their tasks and their pool memberships: a batch of a
    thousand is a statement per table, not a thousand ORM objects."""
    session.execute(insert(DESKTOPS), list(desktops))
    session.execute(insert(TASKS), list(tasks))
    session.execute(insert(PoolMember), list(members))


def mark_for_retirement(
    session: Unit,
    pool_id: str,
    count: int,
    retirable: Sequence[PowerState],
    now: datetime,
    centers: Sequence[str],
) -> list[tuple[str, str, str]]:
    """Pick up to ``count`` free, deletable desktops of the pool without sessions, in a
    ``retirable`` power state (skipping rows another broker holds), and mark them
    ``deleting``, unavailable and asked to be removed (``delete_requested_at``: their
    center's ``remove_desktops`` job terminates them and drops the row once the center
    confirms, as for an administrator's delete). Only desktops of ``centers`` (those the
    pool builds in, which can remove machines) go: a member elsewhere would wait for a
    removal its center cannot make. Returns (id, center id, name) of each."""
    members = select(PoolMember.desktop_id).where(PoolMember.pool_id == pool_id)
    busy = select(SessionRow.desktop_id).where(
        SessionRow.state.in_([s.value for s in ACTIVE_SESSION_STATES])
    )
    picked = [
        (str(i), str(c), str(n))
        for i, c, n in session.execute(
            select(Desktop.id, Desktop.center_id, Desktop.name)
            .where(
                Desktop.id.in_(members),
                Desktop.center_id.in_(list(centers)),
                Desktop.assigned_user_id.is_(None),
                Desktop.deletable.is_(True),
                Desktop.power_state.in_([s.value for s in retirable]),
                Desktop.id.not_in(busy),
            )
            .order_by(Desktop.power_state.desc(), Desktop.name.desc())
            .limit(count)
            .with_for_update(skip_locked=True)
        ).all()
    ]
    if picked:
        session.execute(
            update(Desktop)
            .where(Desktop.id.in_([p[0] for p in picked]), Desktop.assigned_user_id.is_(None))
            .values(
                power_state=from_any(POWER_TRANSITIONS, PowerState.DELETING, retirable).value,
                availability=from_any(AVAILABILITY_TRANSITIONS, Availability.UNAVAILABLE).value,
                delete_requested_at=now,
            )
            .execution_options(synchronize_session=False)
        )
    return picked

"""Cancelling builds nobody wants any more: the only writer of a task's ``cancelled``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from deskbroker.domain.states import (
    PROVISIONING_TRANSITIONS,
    PowerState,
    ProvisioningState,
    transition,
)
from deskbroker.store import events
from deskbroker.store.leases import lease_free, table_of
from deskbroker.store.tables import Desktop, ProvisioningTask

T = ProvisioningState


def cancel_unstarted(
    session: Session,
    *,
    pool_id: str,
    tenant_id: str,
    limit: int | None,
    reason: str,
    now: datetime,
) -> list[str]:
    """Cancel up to ``limit`` (all when None) of the pool's builds that have not reached
    the cloud yet, newest first, and delete the placeholder desktops they made; returns
    the cancelled tasks' ids.

    Only a ``requested`` task whose lease is free is taken: such a task has no machine in
    the cloud (a retry goes back to ``requested`` only once its machine is cleaned up), and
    a worker holding the lease may be about to create it. A build that already reached the
    cloud finishes; the provisioner retires its desktop if the pool still has no use for it.
    """
    if limit is not None and limit <= 0:
        return []
    tasks = table_of(ProvisioningTask)
    query = (
        select(ProvisioningTask.id, ProvisioningTask.desktop_id)
        .where(
            ProvisioningTask.pool_id == pool_id,
            ProvisioningTask.state == T.REQUESTED.value,
            lease_free(tasks, now),
        )
        .order_by(ProvisioningTask.created_at.desc(), ProvisioningTask.id)
        .with_for_update(skip_locked=True)
    )
    if limit is not None:
        query = query.limit(limit)
    picked = session.execute(query).all()
    if not picked:
        return []
    ids = [str(task_id) for task_id, _ in picked]
    placeholders = [str(d) for _, d in picked if d is not None]
    session.execute(
        update(ProvisioningTask)
        .where(ProvisioningTask.id.in_(ids), ProvisioningTask.state == T.REQUESTED.value)
        .values(
            state=transition(PROVISIONING_TRANSITIONS, T.REQUESTED, T.CANCELLED).value,
            desktop_id=None,
            last_error=reason,
        )
        .execution_options(synchronize_session=False)
    )
    if placeholders:
        # The desktop a request made before its build: never handed out, never in the cloud.
        session.execute(
            delete(Desktop)
            .where(
                Desktop.id.in_(placeholders),
                Desktop.assigned_user_id.is_(None),
                Desktop.power_state == PowerState.BUILDING.value,
            )
            .execution_options(synchronize_session=False)
        )
    events.append(
        session,
        "provision.cancelled",
        tenant_id=tenant_id,
        actor="engine",
        pool_id=pool_id,
        detail={"count": len(ids), "reason": reason},
    )
    return ids

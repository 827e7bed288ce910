"""Pools that build in several centers: sharing builds out and overflowing.

``plan_builds`` says where a reconcile's new builds go (``domain.placement``, over the
centers' loads and full marks); ``overflow_build`` moves a build a center refused for
quota or capacity to the next center with room, before it ever reached a cloud. A
refusal marks the center full for the quota back-off: no pool places a build there until
it passes, then builds come back (a refusal again pushes the mark on).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from deskbroker.domain.placement import overflow, place
from deskbroker.domain.provisioning import Provisioning
from deskbroker.store import events
from deskbroker.store import placement as rooms
from deskbroker.store.db import Unit
from deskbroker.store.tables import Center, Desktop, Pool, ProvisioningTask
from deskbroker.store.tasks import TaskRow


def plan_builds(
    session: Unit,
    pool: Pool,
    provisioning: Provisioning,
    centers: list[Center],
    count: int,
    now: datetime,
) -> list[tuple[Center, int]]:
    """How many of ``count`` new builds each center takes, in placement order; fewer in
    all when every center is full."""
    if len(centers) == 1:
        return [(centers[0], count)] if count > 0 else []
    by_id = {c.id: c for c in centers}
    loads = rooms.loads(session, pool.id, [c.id for c in centers], now)
    chosen = place(count, provisioning.placement, loads)
    counts: dict[str, int] = {}
    for center_id in chosen:
        counts[center_id] = counts.get(center_id, 0) + 1
    return [(by_id[c], n) for c, n in counts.items()]


def full_words(session: Unit, centers: list[Center]) -> str:
    """Why no center took a build: each full one and its reason."""
    marks = rooms.full_until(session, [c.id for c in centers])
    parts = [f"{c.name} ({marks[c.id][1]})" for c in centers if c.id in marks]
    return "every center is full: " + "; ".join(parts) if parts else "every center is full"


def overflow_build(
    session: Unit, task: TaskRow, words: str, now: datetime, backoff_s: float
) -> str | None:
    """Mark the task's center full and move the build to the next center with room;
    returns that center's id, or ``None`` when the pool builds in one center only or no
    other has room (the build then waits where it is)."""
    if task.pool_id is None:
        return None
    pool = session.get(Pool, task.pool_id)
    if pool is None:
        return None
    provisioning = Provisioning.from_stored(pool.provisioning)
    candidates = provisioning.build_centers(pool.center_ids)
    if len(candidates) < 2 or task.center_id not in candidates:
        return None
    rooms.mark_full(
        session,
        center_id=task.center_id,
        tenant_id=task.tenant_id,
        until=now + timedelta(seconds=backoff_s),
        reason=words,
    )
    loads = rooms.loads(session, pool.id, candidates, now)
    target = overflow(task.center_id, provisioning.placement, loads)
    if target is None:
        return None
    row = session.get(ProvisioningTask, task.id)
    if row is None:
        return None
    row.center_id = target
    row.request = provisioning.request_for(target)
    if task.desktop_id:
        desktop = session.get(Desktop, task.desktop_id)
        if desktop is not None and desktop.tenant_id == task.tenant_id:
            desktop.center_id = target
    events.append(
        session,
        "provision.overflow",
        tenant_id=task.tenant_id,
        actor="engine",
        pool_id=pool.id,
        desktop_id=task.desktop_id,
        detail={"from": task.center_id, "to": target, "reason": words},
    )
    session.flush()  # before the caller's Core update of the same task row
    return target

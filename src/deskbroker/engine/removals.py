"""Desktops an administrator deleted, or a pool retired, removed from disk: the engine's
side.

``services/desktop_removal.delete_desktop`` (and the provisioner, for a pool's surplus)
marks a broker-built desktop ``deleting`` (``delete_requested_at``) and pokes its
center's ``remove_desktops`` job; this job, with
no transaction open, looks at each such instance: gone, the row goes (the center has
confirmed); being deleted, it waits for the next run; otherwise it asks the center to
terminate it. A failed call is left to the next run (the job's back-off), so a delete
is carried out once the center answers again, and a restart loses nothing: the request
is the row's ``delete_requested_at``. The pass takes one of the center's turns
(``turns.CenterTurns``) only when it has work, so a center that never answers holds no
more of the engine's workers than its share.
"""

from __future__ import annotations

import logging
from datetime import datetime

from deskbroker.centers.base import Capability, MachineInfo
from deskbroker.domain.states import PowerState
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.turns import NoTurn
from deskbroker.errors import CenterError, unanswered
from deskbroker.services.context import BrokerContext
from deskbroker.store import events, membership
from deskbroker.store import removals as store

log = logging.getLogger("deskbroker.engine")


def remove_desktops(ctx: BrokerContext, drivers: DriverCache, center_id: str, now: datetime) -> str:
    """One pass over the center's desktops whose deletion an administrator asked for."""
    with ctx.db.read() as session:
        center = store.center(session, center_id)
        wanted = store.requested(session, center_id)
    if center is None or not wanted:
        return "nothing to remove"
    driver = drivers.get(center)
    if Capability.TERMINATE not in driver.capabilities:
        return "the center cannot delete machines"
    confirmed: list[tuple[str, str, str]] = []
    asked = 0
    failures: list[str] = []
    silent = False
    with drivers.turn(center_id) as took:
        if not took:
            raise NoTurn(f"center {center.name} holds its share of the engine's workers")
        for desktop_id, tenant_id, name, external_id, driver_state in wanted:
            try:
                found = driver.machine(external_id)
                if found is None or found.gone:
                    confirmed.append((desktop_id, tenant_id, name))
                elif found.power_state is not PowerState.DELETING:
                    driver.terminate(
                        MachineInfo(external_id=external_id, name=name, driver_state=driver_state)
                    )
                    asked += 1
            except CenterError as exc:
                log.warning("deleting desktop %s on center %s: %s", name, center.name, exc)
                failures.append(f"{name}: {exc.detail}")
                if exc.unanswered:
                    # The next call would wait as long: the pass ends here, holding the
                    # worker and the center's turn one deadline, not one per desktop.
                    silent = True
                    break
    removed = 0
    if confirmed:
        with ctx.db.write() as session:
            # Each tenant's membership before the first row goes (``membership.hold``):
            # a refresh holding it waits for these rows as it places them, so deleting
            # one and then waiting for the refresh's place on the next deadlocked with
            # it. Several tenants in one sorted order, all before any row: a unit that
            # took one, deleted, then waited for another could cross a unit taking them
            # the other way round.
            for tenant_id in sorted({tenant for _, tenant, _ in confirmed}):
                membership.hold(session, tenant_id)
            # In id order, as a forced delete of the center locks them
            # (``store.lock_requested``): the two cannot deadlock on PostgreSQL.
            for desktop_id, tenant_id, name in sorted(confirmed):
                # Re-checked under the write: a desktop assigned or restored meanwhile
                # stays, and one whose center was deleted by force meanwhile is gone.
                if store.forget_removed(session, desktop_id):
                    removed += 1
                    events.append(
                        session,
                        "desktop.deleted",
                        tenant_id=tenant_id,
                        actor="engine",
                        desktop_id=desktop_id,
                        detail={"name": name, "center": center.name},
                    )
    if failures:
        # The job's back-off retries; the words say which and why.
        failed = CenterError("; ".join(failures)[:2000])
        raise unanswered(failed) if silent else failed
    return f"{removed} removed, {asked} asked to delete"

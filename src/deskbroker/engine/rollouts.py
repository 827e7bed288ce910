"""The engine's side of a rollout: watch the rebuilds under way, start new ones on free
desktops (a batch at a time), and finish the rollout once every desktop is on its image.

Each run reads the pool's desktops in one unit of work, asks the center with none open,
and records each outcome in a unit of its own. A desktop is taken out of the claim by a
statement that checks it is still free, before its rebuild is asked, so a login either
got it first (and it waits for its user to leave) or cannot get it until it is back.
"""

from __future__ import annotations

import logging
from datetime import datetime

from deskbroker.centers.base import CenterDriver, MachineInfo
from deskbroker.domain.rollouts import Fate, Progress, RolloutStep, move, words
from deskbroker.domain.states import PowerState, RolloutState
from deskbroker.engine.drivers import DriverCache
from deskbroker.errors import CenterError
from deskbroker.services import rollouts as service
from deskbroker.services.context import BrokerContext
from deskbroker.store import events
from deskbroker.store import rollouts as store
from deskbroker.store.tables import Center, PoolRollout

log = logging.getLogger("deskbroker.engine.rollouts")

REASON = "rollout"
# Power states a rebuild ends in (a machine rebuilt while shut off stays shut off).
_SETTLED = (PowerState.RUNNING, PowerState.STOPPED)


def advance_rollout(ctx: BrokerContext, drivers: DriverCache, pool_id: str, now: datetime) -> str:
    """The pool's rollout job: one round of watching, starting and finishing."""
    with ctx.db.read() as session:
        rollout = store.rollout_of(session, pool_id)
        if rollout is None:
            return "no rollout"
        center = session.get(Center, rollout.center_id)
        desktops = store.pool_desktops(session, pool_id, rollout.center_id)
    if center is None:
        return "center is gone"
    under_way = [d for d in desktops if d.rebuild_reason and not d.rebuild_failed]
    if rollout.state == RolloutState.DONE.value and not under_way:
        return "done"
    driver = drivers.get(center)
    finished = sum(_watch(ctx, driver, d, now) for d in under_way)
    started = 0
    if rollout.state == RolloutState.ROLLING.value:
        started = _start_batch(ctx, driver, rollout, now)
    return _finish_if_done(ctx, pool_id, now, finished, started)


def _watch(
    ctx: BrokerContext, driver: CenterDriver, desktop: store.RolloutDesktop, now: datetime
) -> int:
    """One rebuild under way: back in the claim once the center reports it on its new
    image and settled; marked failed if the center put it in error or lost it."""
    try:
        machine = driver.machine(desktop.external_id)
    except CenterError as exc:
        log.info("rebuild of %s: the center did not answer: %s", desktop.name, exc.detail)
        return 0
    with ctx.db.write() as session:
        if machine is None or machine.gone:
            store.mark_failed(session, desktop.id, "the center no longer has this machine")
            return 0
        if machine.power_state is PowerState.ERROR:
            store.mark_failed(session, desktop.id, machine.fault or "the rebuild failed")
            return 0
        image = str(machine.attributes.get("image") or "")
        if image != desktop.rebuild_image or machine.power_state not in _SETTLED:
            return 0
        store.put_back(session, desktop.id, power=machine.power_state, image_id=image, now=now)
        return 1


def _start_batch(
    ctx: BrokerContext, driver: CenterDriver, rollout: PoolRollout, now: datetime
) -> int:
    """Rebuild free desktops (and asked-for persistent ones nobody is in), up to the
    rollout's batch size at once."""
    with ctx.db.read() as session:
        desktops = store.pool_desktops(session, rollout.pool_id, rollout.center_id)
    fates = service.fates(rollout, desktops)
    room = rollout.batch_size - sum(1 for f in fates if f is Fate.REBUILDING)
    picked = [d for d, f in zip(desktops, fates, strict=True) if f is Fate.REBUILD_NOW]
    started = 0
    for desktop in picked:
        if started >= room:
            break
        with ctx.db.write() as session:
            taken = store.take_out(
                session,
                desktop.id,
                tenant_id=rollout.tenant_id,
                pool_id=rollout.pool_id,
                reason=REASON,
                image_id=rollout.image_id,
                persistent_too=rollout.include_persistent,
                now=now,
            )
        if not taken:
            continue  # a login took it meanwhile: it waits for its user now
        try:
            driver.rebuild(_machine(desktop), rollout.image_id)
        except CenterError as exc:
            _not_started(ctx, rollout, desktop, exc.detail, now)
            continue
        with ctx.db.write() as session:
            store.mark_building(session, desktop.id, now)
            events.append(
                session,
                "rollout.rebuild",
                tenant_id=rollout.tenant_id,
                actor="engine",
                desktop_id=desktop.id,
                pool_id=rollout.pool_id,
                detail={"name": desktop.name, "image": rollout.image},
            )
        started += 1
    return started


def _not_started(
    ctx: BrokerContext,
    rollout: PoolRollout,
    desktop: store.RolloutDesktop,
    why: str,
    now: datetime,
) -> None:
    """The center refused the rebuild: the desktop goes back into the claim as it was,
    and the rollout says why (the next run tries again)."""
    with ctx.db.write() as session:
        store.put_back(session, desktop.id, power=None, image_id=None, now=now)
        row = store.rollout_of(session, rollout.pool_id, lock=True)
        if row is not None:
            row.last_error = f"{desktop.name}: {why}"[:2000]


def _finish_if_done(
    ctx: BrokerContext, pool_id: str, now: datetime, finished: int, started: int
) -> str:
    with ctx.db.write() as session:
        rollout = store.rollout_of(session, pool_id, lock=True)
        if rollout is None:
            return "rollout is gone"
        desktops = store.pool_desktops(session, pool_id, rollout.center_id)
        progress = Progress.of(service.fates(rollout, desktops))
        state = RolloutState(rollout.state)
        if state is RolloutState.ROLLING and progress.finished:
            state = move(rollout.state, RolloutStep.FINISH, subject="pool")
            rollout.state = state.value
            events.append(
                session,
                "rollout.done",
                tenant_id=rollout.tenant_id,
                actor="engine",
                pool_id=pool_id,
                detail={"image": rollout.image, "desktops": progress.total},
            )
        summary = words(progress, state, rolled_back=rollout.rolled_back)
    return f"{summary} ({started} started, {finished} finished)"


def _machine(desktop: store.RolloutDesktop) -> MachineInfo:
    return MachineInfo(external_id=desktop.external_id, name=desktop.name)

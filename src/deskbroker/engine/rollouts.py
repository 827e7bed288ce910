"""A pool's rollout and upkeep job: take desktops out for their rebuild (a rollout's
batch, the scheduled refresh or reboot), have them carried out (``rebuilds.py``), and
finish the rollout once every desktop is on its image.

A desktop is taken out of the claim by a statement that checks it is still free (and
nobody has a session on it) before its center is asked, so a login either got it
first (and it waits for its user to leave) or cannot get it until it is back.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from deskbroker.domain.rollouts import Fate, Progress, RolloutStep, move, words
from deskbroker.domain.states import RolloutState
from deskbroker.domain.upkeep import RebuildReason, ScheduledAction, window_day
from deskbroker.engine import rebuilds
from deskbroker.engine.drivers import DriverCache
from deskbroker.services import pool_upkeep
from deskbroker.services import rollouts as service
from deskbroker.services.context import BrokerContext
from deskbroker.store import events
from deskbroker.store import rollouts as store
from deskbroker.store.tables import Pool, PoolRollout, utcnow


def advance_rollout(ctx: BrokerContext, drivers: DriverCache, pool_id: str, now: datetime) -> str:
    """The pool's rollout-and-upkeep job (``pool_rollout``): one round. A pool with no
    rollout under way, nothing scheduled and nothing out costs one read."""
    with ctx.db.read() as session:
        work = store.pool_work(session, pool_id)
        busy = (
            work.rebuilds
            or work.rollout_state in (RolloutState.ROLLING.value, RolloutState.PAUSED.value)
            or work.scheduled_action not in (None, ScheduledAction.NONE.value)
        )
        rollout = store.rollout_of(session, pool_id) if busy else None
    if not busy:
        return "idle"
    taken = 0
    if rollout is not None and rollout.state == RolloutState.ROLLING.value:
        taken += _take_batch(ctx, rollout, now)
    scheduled = _scheduled(ctx, pool_id, now)
    done = rebuilds.run_round(ctx, drivers, pool_id, now)
    _soon_if_busy(ctx, pool_id)
    outcome = (
        f"{taken} taken out, {done.started} asked, {done.finished} back, "
        + (f"{done.failed} refused")
        + (f", {done.waiting} waiting for a turn of their center" if done.waiting else "")
        + (f"; scheduled {scheduled}" if scheduled else "")
    )
    if rollout is None:
        return outcome
    return f"{_finish_if_done(ctx, pool_id)}; {outcome}"


# While desktops are out, the job looks again this soon (a GET per desktop out, at most a
# batch of them), instead of after the whole provisioning interval.
WATCH_S = 1.0


def _soon_if_busy(ctx: BrokerContext, pool_id: str) -> None:
    with ctx.db.read() as session:
        work = store.pool_work(session, pool_id)
    if work.rebuilds or work.rollout_state == RolloutState.ROLLING.value:
        with ctx.db.write() as session:
            store.watch_again(session, pool_id, utcnow() + timedelta(seconds=WATCH_S))


def _take_batch(ctx: BrokerContext, rollout: PoolRollout, now: datetime) -> int:
    """Take free desktops (and asked-for persistent ones nobody is in) out for their
    rebuild, up to the rollout's batch size under way at once."""
    with ctx.db.read() as session:
        desktops = store.pool_desktops(session, rollout.pool_id, rollout.center_id)
    fates = service.fates(rollout, desktops)
    room = rollout.batch_size - sum(1 for f in fates if f is Fate.REBUILDING)
    taken = 0
    for desktop, fate in zip(desktops, fates, strict=True):
        if taken >= room:
            break
        if fate is not Fate.REBUILD_NOW:
            continue
        with ctx.db.write() as session:
            # False: a login took it meanwhile, and it waits for its user now.
            taken += store.take_out(
                session,
                desktop.id,
                tenant_id=rollout.tenant_id,
                pool_id=rollout.pool_id,
                reason=RebuildReason.ROLLOUT.value,
                image_id=rollout.image_id,
                persistent_too=rollout.include_persistent,
                now=now,
            )
    return taken


def _scheduled(ctx: BrokerContext, pool_id: str, now: datetime) -> str:
    """In the pool's daily window, once: take every free desktop nobody is on out for a
    refresh (rebuilt from the pool's image) or a reboot. Desktops in use are skipped."""
    with ctx.db.write() as session:
        upkeep = store.upkeep_of(session, pool_id, lock=True)
        pool = session.get(Pool, pool_id)
        if upkeep is None or pool is None or upkeep.scheduled_action == ScheduledAction.NONE:
            return ""
        day = window_day(
            now,
            at=upkeep.scheduled_at,
            window_minutes=upkeep.window_minutes,
            timezone=upkeep.timezone,
            last_served=upkeep.last_scheduled_on,
        )
        if day is None:
            return ""
        upkeep.last_scheduled_on = day
        reboot = upkeep.scheduled_action == ScheduledAction.REBOOT.value
        image = "" if reboot else pool_upkeep.pool_image(session, pool)
        if not reboot and not image:
            return "no image to refresh from"
        reason = RebuildReason.REBOOT if reboot else RebuildReason.REFRESH
        free = store.free_members(session, pool_id)
        taken = sum(
            store.take_out(
                session,
                desktop_id,
                tenant_id=pool.tenant_id,
                pool_id=pool_id,
                reason=reason.value,
                image_id=image,
                persistent_too=False,
                now=now,
            )
            for desktop_id in free
        )
        events.append(
            session,
            f"upkeep.{upkeep.scheduled_action}",
            tenant_id=pool.tenant_id,
            actor="engine",
            pool_id=pool_id,
            detail={"day": day, "desktops": taken},
        )
    return f"{upkeep.scheduled_action} of {taken} free desktop(s) for {day}"


def _finish_if_done(ctx: BrokerContext, pool_id: str) -> str:
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
        return words(progress, state, rolled_back=rollout.rolled_back)

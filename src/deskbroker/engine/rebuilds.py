"""Desktops out of the claim for a rebuild or a reboot (a rollout, a refresh on release
or on schedule): ask their center, watch them, and give them back.

Every desktop here was taken out of the claim first (``store.rollouts.take_out``, in a
unit of work of its own); the center is asked with no unit of work open, and each
outcome is recorded in one. A rebuild is done when the center reports the machine on
its new image and settled (running, or shut off as it was); a reboot when it runs.

The rows are read once per round, and a round may outlive its job's lease: each ask is
therefore claimed first (``store.rollouts.claim_ask``, the intent written before the
call), so a stale or duplicate run never asks twice, nor for a desktop given back and
handed out meanwhile. An ask whose answer was never recorded is asked again once any
call it made is surely over."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from deskbroker.centers.base import Capability, CenterDriver, MachineInfo, PowerAction
from deskbroker.domain.states import PowerState
from deskbroker.domain.timestamps import aware
from deskbroker.domain.upkeep import RebuildReason
from deskbroker.engine.builds import call_bound_s
from deskbroker.engine.drivers import DriverCache
from deskbroker.errors import CenterError
from deskbroker.services.context import BrokerContext
from deskbroker.store import events
from deskbroker.store import rollouts as store
from deskbroker.store.tables import Center, utcnow

log = logging.getLogger("deskbroker.engine.rebuilds")

# Power states a rebuild ends in (a machine rebuilt while shut off stays shut off).
_SETTLED = (PowerState.RUNNING, PowerState.STOPPED)


@dataclass
class Round:
    """What one round did, for the job's outcome line."""

    started: int = 0
    finished: int = 0
    failed: int = 0
    # Left for the next round: their center held its share of turns.
    waiting: int = 0


def run_round(ctx: BrokerContext, drivers: DriverCache, pool_id: str, now: datetime) -> Round:
    """Ask for the rebuilds and reboots taken out but not asked yet, and watch those
    asked before."""
    with ctx.db.read() as session:
        rows = [r for r in store.rebuilds_of(session, pool_id) if not r.failed]
        centers = {
            c.id: c for c in (session.get(Center, i) for i in {r.center_id for r in rows}) if c
        }
    done = Round()
    for row in rows:
        center = centers.get(row.center_id)
        if center is None:
            continue
        driver = drivers.get(center)
        if row.asking:
            _asked_long_ago(ctx, driver, row, now)
            continue
        with drivers.turn(center.id) as took:
            # A center holding its share of turns: this desktop waits for the next round.
            if not took:
                done.waiting += 1
            elif row.started:
                done.finished += _watch(ctx, driver, row, now)
            else:
                started = _ask(ctx, driver, row, now)
                if started is not None:
                    done.started += started
                    done.failed += 1 - started
    return done


def _asked_long_ago(
    ctx: BrokerContext, driver: CenterDriver, row: store.RebuildRow, now: datetime
) -> None:
    """An ask claimed but not answered: another run's call may still be out (it follows
    the claim at once), so it is left alone until that call is surely over; then it is
    asked again (its run died)."""
    after = call_bound_s(driver)
    if aware(now) - aware(row.asked_at) < timedelta(seconds=after):
        return
    with ctx.db.write() as session:
        if store.ask_again(session, row.desktop_id, now - timedelta(seconds=after)):
            log.warning("%s of %s: its ask was never answered; asking again", row.reason, row.name)


def _ask(
    ctx: BrokerContext, driver: CenterDriver, row: store.RebuildRow, now: datetime
) -> int | None:
    """Ask the center for one rebuild or reboot: 1 asked, 0 refused, None not ours to ask
    (another run claimed it, or the desktop is no longer out for it)."""
    with ctx.db.write() as session:
        if not store.claim_ask(session, row.desktop_id, utcnow()):
            log.info("%s of %s: asked by another run, or given back", row.reason, row.name)
            return None
    machine = MachineInfo(external_id=row.external_id, name=row.name)
    reboot = row.reason == RebuildReason.REBOOT.value
    image = ""
    try:
        if reboot:
            driver.require(Capability.POWER)
            driver.power(machine, PowerAction.REBOOT)
        else:
            driver.require(Capability.REBUILD)
            image = driver.rebuild(machine, row.image_id)
    except CenterError as exc:
        _failed(ctx, row, exc.detail, now)
        return 0
    with ctx.db.write() as session:
        if not store.mark_started(
            session, row.desktop_id, image_id=image, rebuilt=not reboot, now=now
        ):
            return None
        events.append(
            session,
            "desktop.reboot" if reboot else f"{row.reason}.rebuild",
            tenant_id=row.tenant_id,
            actor="engine",
            desktop_id=row.desktop_id,
            pool_id=row.pool_id,
            detail={"name": row.name, **({"image": image} if image else {})},
        )
    return 1


def _failed(ctx: BrokerContext, row: store.RebuildRow, why: str, now: datetime) -> None:
    """The center refused: a rollout's desktop stays out and says why (an administrator
    resumes or rolls back to try again); a refresh's or reboot's goes back as it was."""
    with ctx.db.write() as session:
        if row.reason == RebuildReason.ROLLOUT.value:
            store.mark_failed(session, row.desktop_id, why)
        else:
            store.put_back(session, row.desktop_id, power=None, image_id=None, now=now)
        events.append(
            session,
            f"{row.reason}.failed",
            tenant_id=row.tenant_id,
            actor="engine",
            desktop_id=row.desktop_id,
            pool_id=row.pool_id,
            detail={"name": row.name, "error": why[:500]},
        )


def _watch(ctx: BrokerContext, driver: CenterDriver, row: store.RebuildRow, now: datetime) -> int:
    try:
        machine = driver.machine(row.external_id)
    except CenterError as exc:
        log.info("%s of %s: the center did not answer: %s", row.reason, row.name, exc.detail)
        return 0
    if machine is None or machine.gone:
        _failed(ctx, row, "the center no longer has this machine", now)
        return 0
    if machine.power_state is PowerState.ERROR:
        _failed(ctx, row, machine.fault or f"the {row.reason} left it in error", now)
        return 0
    if row.reason == RebuildReason.REBOOT.value:
        if machine.power_state is not PowerState.RUNNING:
            return 0
        image = None
    else:
        image = str(machine.attributes.get("image") or "")
        if image != row.image_id or machine.power_state not in _SETTLED:
            return 0
    with ctx.db.write() as session:
        store.put_back(session, row.desktop_id, power=machine.power_state, image_id=image, now=now)
    return 1

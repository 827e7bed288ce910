"""Plan timers firing: suspend, shut down, reboot, release or terminate a desktop.

The engine runner claims due ``Timer`` rows by lease and calls ``execute_timer`` in a
worker thread. Whether the action may still run is decided by ``domain.plans.judge``
on facts read at fire time, inside a transaction that locks the desktop row, so a
session event and a firing timer never both win. The center call itself runs outside
any transaction (it may take seconds); the window between the check and the call is
that one request. Two things guard that window: a desktop about to be terminated leaves
the claim in the judging transaction (no login is handed a machine being deleted), and
the timer's lease is renewed just before the call (a node that stalled past its lease,
while another judged the timer again, calls nothing).

A terminate that took its desktop out marks its timer (``took_out_at``) in that same
transaction. A node that dies between that commit and the end of the call leaves the
timer with its lease; once the lease runs out the next holder judges it again and either
finishes the terminate or, when it no longer applies, puts the desktop back. The mark
tells the engine's take-out from an administrator's, which is never undone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from deskbroker.centers.base import Capability, CenterDriver, MachineInfo, PowerAction
from deskbroker.domain import plans
from deskbroker.domain.plans import FireFacts, Outcome, PlanAction, Trigger, Verdict
from deskbroker.domain.states import (
    AVAILABILITY_TRANSITIONS,
    POWER_ACTIONS,
    Availability,
    PowerState,
    SessionState,
    agent_after_power,
    power_state,
    settle,
    transition,
)
from deskbroker.domain.timestamps import aware
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.turns import TURN_WAIT_S, CenterTurns
from deskbroker.services import agents, desktops
from deskbroker.services.context import BrokerContext
from deskbroker.store import desktop_rows, events, leases
from deskbroker.store import sessions as rows
from deskbroker.store.db import Unit as Session
from deskbroker.store.tables import Center, Desktop, Timer, utcnow

log = logging.getLogger("deskbroker.engine.plans")

_DRIVER_ACTION: dict[PlanAction, PowerAction] = {
    PlanAction.SUSPEND: PowerAction.SUSPEND,
    PlanAction.SHUTDOWN: PowerAction.STOP,
    PlanAction.REBOOT: PowerAction.REBOOT,
}
# The power state the broker records once the center accepted the action; the next
# scan corrects it if the center disagrees. Recording it at once matters: a user who
# connects next must get "starting", not a descriptor for a suspended machine.
# The power action table says it for the actions a driver carries out.
_AFTER: dict[PlanAction, PowerState] = {
    **{plan: POWER_ACTIONS[action].leads_to for plan, action in _DRIVER_ACTION.items()},
    PlanAction.TERMINATE: PowerState.DELETING,
}


def _facts(session: Session, timer: Timer, desktop: Desktop, driver: CenterDriver) -> FireFacts:
    trigger_state: SessionState | None = None
    if timer.session_id is not None:
        state = rows.session_state(session, timer.session_id)
        trigger_state = SessionState(state) if state is not None else None
    others = rows.other_open_states(session, desktop.id, timer.session_id)
    assigned_at = desktop.assigned_at
    return FireFacts(
        trigger=Trigger(timer.trigger),
        action=PlanAction(timer.action),
        trigger_state=trigger_state,
        other_states=tuple(SessionState(s) for s in others),
        assigned=desktop.assigned_user_id is not None,
        reassigned=assigned_at is not None and aware(assigned_at) > aware(timer.created_at),
        power_state=power_state(desktop.power_state),
        deletable=desktop.deletable,
        can_power=driver.supports(Capability.POWER),
        can_terminate=driver.supports(Capability.TERMINATE),
    )


def _event(session: Session, kind: str, timer: Timer, desktop: Desktop, **detail: Any) -> None:
    events.append(
        session,
        kind,
        tenant_id=timer.tenant_id,
        actor=f"{timer.plan} plan",
        user_id=desktop.assigned_user_id,
        desktop_id=desktop.id,
        pool_id=desktop.assigned_pool_id,
        detail={
            "timer_id": timer.id,
            "session_id": timer.session_id,
            "plan": timer.plan,
            "trigger": timer.trigger,
            "action": timer.action,
            **detail,
        },
    )


def _set_power(desktop: Desktop, target: PowerState) -> None:
    power = settle(desktop.power_state, target)
    desktop.power_state = power.value
    desktop.agent_state = agent_after_power(desktop.agent_state, power).value


def _release(session: Session, desktop: Desktop, actor: str) -> None:
    if desktop.assigned_user_id is not None:
        desktops.release(
            session,
            desktop_id=desktop.id,
            tenant_id=desktop.tenant_id,
            user_id=None,
            actor=actor,
        )


def _minutes(delta_s: float) -> str:
    minutes = max(1, round(delta_s / 60))
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


# What a warning tells the user of the action it announces (release: the default).
_ANNOUNCED = {
    PlanAction.SUSPEND.value: "will be suspended",
    PlanAction.SHUTDOWN.value: "will be shut down",
    PlanAction.REBOOT.value: "will be restarted",
}


def _warn(session: Session, timer: Timer, desktop: Desktop) -> None:
    """Queue the warning message for the session, through the desktop's agent."""
    row = rows.session_row(session, timer.session_id) if timer.session_id else None
    if row is None:
        return
    # The action this warning announces: the rule's timer of the same session and trigger.
    found = rows.due_of(session, desktop.id, timer.session_id or "", timer.plan, timer.trigger)
    left = (
        _minutes((aware(found[0]) - aware(timer.due_at)).total_seconds())
        if found
        else "a few minutes"
    )
    why = {
        Trigger.IDLE.value: "this session has been idle",
        Trigger.SESSION_LIMIT.value: "this session reaches its time limit",
        Trigger.DISCONNECT.value: "this session is disconnected",
    }.get(timer.trigger, "a plan of your administrator applies")
    # A power plan's action keeps the user's desktop; a release plan's takes it away.
    what = _ANNOUNCED.get(found[1] if found else "", "will be released and you will be logged off")
    text = (
        f"{why}: in {left} the desktop {desktop.name} {what}. Save your work; any activity "
        "now keeps your session."
        if timer.trigger in (Trigger.IDLE.value, Trigger.DISCONNECT.value)
        else f"{why}: in {left} the desktop {desktop.name} {what}. Save your work now."
    )
    action = agents.queue_action(
        session,
        desktop,
        "message",
        session_id=row.id,
        session_key=row.session_key,
        message=text,
        actor=f"{timer.plan} plan",
    )
    _event(session, "plan.warn", timer, desktop, action_id=action.id, message=text)


def _log_off(session: Session, timer: Timer, desktop: Desktop) -> None:
    """After a release on idle or time limit, the user's session goes too."""
    if Trigger(timer.trigger) not in plans.LOGOFF_TRIGGERS or timer.session_id is None:
        return
    row = rows.session_row(session, timer.session_id)
    if row is None or row.ended_at is not None:
        return
    action = agents.queue_action(
        session,
        desktop,
        "logoff",
        session_id=row.id,
        session_key=row.session_key,
        actor=f"{timer.plan} plan",
    )
    _event(session, "plan.logoff", timer, desktop, action_id=action.id)


def watch_agents(ctx: BrokerContext, drivers: DriverCache, target: str, now: datetime) -> str:
    """The periodic job that marks silent agents ``lost``."""
    sweep = agents.mark_lost(ctx, now)
    return f"{len(sweep.marked)} agents lost"


@dataclass(frozen=True)
class _Judged:
    """A verdict that needs a center call, with the timer as read when judged."""

    verdict: Verdict
    timer: Timer
    # The desktop is out of the claim by this timer's doing (this judge or an earlier
    # holder's took it out, it was available): a call that does not happen puts it back.
    # One an administrator had taken out stays out.
    took_out: bool = False


def _make(desktop: Desktop, availability: Availability) -> bool:
    """The desktop's availability moved to ``availability`` through the table; True if
    this changed it."""
    if desktop.availability == availability.value:
        return False
    desktop.availability = transition(
        AVAILABILITY_TRANSITIONS,
        Availability(desktop.availability),
        availability,
        subject=f"desktop {desktop.name}",
    ).value
    return True


def _take_out(desktop: Desktop) -> bool:
    """Out of every offer, before the terminate: a login during the call must not be
    handed the machine being deleted. True if this changed the availability."""
    return _make(desktop, Availability.UNAVAILABLE)


def _put_back(session: Session, desktop_id: str) -> None:
    """Undo ``_take_out`` when the terminate did not happen: the desktop is free again
    (a retry judges anew, and finds it reassigned if a login took it meanwhile)."""
    desktop = rows.lock_desktop(session, desktop_id)
    if desktop is not None:
        desktop_rows.back_in_claim(desktop)


def _done_with(session: Session, timer: Timer, desktop: Desktop) -> None:
    """Delete a timer whose action will not call the center, putting back the desktop
    its terminate took out (a node died after taking it out, and the terminate no
    longer applies)."""
    if timer.took_out_at is not None:
        desktop_rows.back_in_claim(desktop)
    session.delete(timer)


def _judge_and_release(
    ctx: BrokerContext, timer_id: str, owner: str, driver: CenterDriver
) -> _Judged | None:
    """Decide under the desktop's row lock; carry out what needs no center call.

    Returns the verdict (and the timer as read) when a center call must follow,
    ``None`` when all is done. A terminate's desktop leaves the claim here, in the
    same unit as the verdict.
    """
    with ctx.db.write() as session:
        timer = rows.timer(session, timer_id)
        if timer is None or timer.lease_owner != owner:
            return None  # cancelled by a session event, or another broker took it over
        desktop = rows.lock_desktop(session, timer.desktop_id)
        if not rows.timer_held(session, timer_id, owner):
            # Cancelled while this waited for the desktop's lock: the session event that
            # cancels a timer (a reconnect) locks the desktop first. Judged on the timer
            # as read before the lock, the release went ahead under the returned user.
            return None
        if desktop is None:
            session.delete(timer)
            return None
        verdict = plans.judge(_facts(session, timer, desktop, driver))
        if verdict.outcome is not Outcome.RUN:
            kind = "plan.cancelled" if verdict.outcome is Outcome.CANCEL else "plan.skipped"
            _event(session, kind, timer, desktop, reason=verdict.reason)
            _done_with(session, timer, desktop)
            return None
        if verdict.action is PlanAction.WARN:
            _warn(session, timer, desktop)
            _done_with(session, timer, desktop)
            return None
        if verdict.action is PlanAction.RELEASE:
            _event(session, "plan.release", timer, desktop, reason=verdict.reason)
            if timer.took_out_at is not None:
                # Before the release, which hands it back to its pool.
                desktop_rows.back_in_claim(desktop)
            _release(session, desktop, f"{timer.plan} plan")
            _log_off(session, timer, desktop)
            session.delete(timer)
            return None
        if verdict.action is PlanAction.TERMINATE:
            # Marked in the unit that takes it out: a node dying after this commit
            # leaves the next holder of the timer knowing the desktop is the engine's
            # to put back. A mark already there is an earlier holder's, who died.
            took = _take_out(desktop) or timer.took_out_at is not None
            if took and timer.took_out_at is None:
                timer.took_out_at = datetime.now(UTC)
            return _Judged(verdict, timer, took_out=took)
        return _Judged(verdict, timer)


def _still_held(ctx: BrokerContext, judged: _Judged, owner: str) -> bool:
    """Renew the timer's lease just before the center call. False when another node
    holds it (this one stalled past the lease and that node judges it again) or a
    session event deleted it: then this node does nothing with its stale verdict."""
    until = datetime.now(UTC) + timedelta(seconds=ctx.settings.lease_ttl_s)
    try:
        with ctx.db.write() as session:
            leases.renew_held(session, Timer, judged.timer.id, owner, until)
    except leases.LeaseLost:
        log.info("plan timer %s: its lease passed on; not acting on it", judged.timer.id)
        if judged.took_out:
            _give_back_if_unclaimed(ctx, judged.timer)
        return False
    return True


def _give_back_if_unclaimed(ctx: BrokerContext, timer: Timer) -> None:
    # A timer another node holds is that node's to finish: its terminate relies on the
    # desktop staying out. A deleted timer (its session came back) has nobody to finish.
    with ctx.db.write() as session:
        if rows.timer(session, timer.id) is None:
            _put_back(session, timer.desktop_id)


def _record_done(ctx: BrokerContext, timer: Timer, verdict: Verdict) -> None:
    # ``timer`` is the row as judged: a session event may have deleted it since, and the
    # action, which did run, is recorded all the same.
    with ctx.db.write() as session:
        desktop = rows.desktop(session, timer.desktop_id)
        if desktop is None:
            return
        _set_power(desktop, _AFTER[verdict.action])
        _event(session, f"plan.{verdict.action.value}", timer, desktop, reason=verdict.reason)
        if verdict.action is PlanAction.TERMINATE:
            # Out of every offer (the judge took it out already, unless an administrator
            # put it back meanwhile), so releasing it cannot hand it to the next user.
            _take_out(desktop)
            session.flush()
            _release(session, desktop, f"{timer.plan} plan")
        rows.delete_timers(session, [timer.id])


def _record_failure(
    ctx: BrokerContext,
    timer_id: str,
    owner: str,
    now: datetime,
    error: Exception,
    *,
    put_back: str | None = None,
) -> None:
    """Retry later, or give up after ``plan_max_attempts``; ``put_back`` is a desktop the
    judge took out of the claim for a terminate that did not happen."""
    message = str(error)[:2000] or type(error).__name__
    with ctx.db.write() as session:
        timer = rows.timer(session, timer_id)
        # A timer another node holds now is that node's: its terminate may be under way
        # and relies on the desktop staying out (its mark stays for it).
        if put_back is not None and (timer is None or timer.lease_owner == owner):
            _put_back(session, put_back)
            if timer is not None:
                timer.took_out_at = None
        if timer is None:
            return
        desktop = rows.desktop(session, timer.desktop_id)
        failures = timer.failures + 1
        if failures >= ctx.settings.plan_max_attempts:
            if desktop is not None:
                _event(session, "plan.failed", timer, desktop, error=message, attempts=failures)
            session.delete(timer)
            return
        if desktop is not None:
            _event(session, "plan.retry", timer, desktop, error=message, attempts=failures)
        leases.release(
            session,
            Timer,
            timer_id,
            owner,
            failures=failures,
            last_error=message,
            due_at=now + plans.retry_delay(failures),
        )


def execute_timer(
    ctx: BrokerContext,
    drivers: DriverCache,
    timer_id: str,
    owner: str,
    now: datetime,
    *,
    turns: CenterTurns | None = None,
) -> None:
    """Carry out one due plan timer that ``owner`` holds the lease of.

    The timer row is deleted once its action ran, was skipped (recorded with a reason)
    or lost its reason. A failing center call releases the lease with ``failures + 1``,
    ``last_error`` and a later ``due_at``; after ``plan_max_attempts`` it is dropped
    with a ``plan.failed`` event; a terminate's desktop goes back in the claim either
    way. A lease lost before the call leaves the timer to its new holder. Never raises
    for a center's failure.
    """
    now = aware(now)
    with ctx.db.read() as session:
        timer = rows.timer(session, timer_id)
        if timer is None or timer.lease_owner != owner:
            return
        desktop = rows.desktop(session, timer.desktop_id)
        center = rows.center_of(session, desktop.center_id) if desktop is not None else None
    if desktop is None or center is None:
        return  # the desktop's deletion cascades to its timers
    if turns is None:
        _carry_out(ctx, drivers, timer_id, owner, now, desktop, center)
        return
    # A center's timers take turns with its other work: a thousand users logging off a
    # cloud that never answers must not hold every worker of the engine.
    if not turns.take(center.id, center.tenant_id):
        with ctx.db.write() as session:
            later = utcnow() + timedelta(seconds=TURN_WAIT_S)
            leases.release(session, Timer, timer_id, owner, due_at=later)
        return
    try:
        _carry_out(ctx, drivers, timer_id, owner, now, desktop, center)
    finally:
        turns.end(center.id, center.tenant_id)


def _carry_out(
    ctx: BrokerContext,
    drivers: DriverCache,
    timer_id: str,
    owner: str,
    now: datetime,
    desktop: Desktop,
    center: Center,
) -> None:
    """Judge the timer and, when its action still applies, call the center."""
    judged: _Judged | None = None
    try:
        driver = drivers.get(center)
        judged = _judge_and_release(ctx, timer_id, owner, driver)
        if judged is None or not _still_held(ctx, judged, owner):
            return
        verdict = judged.verdict
        machine = MachineInfo(
            external_id=desktop.external_id,
            name=desktop.name,
            address=desktop.address,
            power_state=power_state(desktop.power_state),
        )
        if verdict.action is PlanAction.TERMINATE:
            driver.terminate(machine)
        else:
            driver.power(machine, _DRIVER_ACTION[verdict.action])
    except Exception as exc:  # a center's failure is retried, never lost
        log.warning("plan timer %s on desktop %s failed: %s", timer_id, desktop.name, exc)
        taken = desktop.id if judged is not None and judged.took_out else None
        _record_failure(ctx, timer_id, owner, now, exc, put_back=taken)
        return
    _record_done(ctx, judged.timer, verdict)

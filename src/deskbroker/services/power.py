"""Power a desktop on an administrator's (or helpdesk's) word.

The center is asked first, outside any transaction; the broker then records the power
state the action leads to (the next scan corrects it if the center disagrees) and an
audit event. A desktop with a session in use is only stopped, suspended or rebooted
with ``force``: the person on it loses their work.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from sqlalchemy import select

from deskbroker.centers.base import Capability, MachineInfo, PowerAction
from deskbroker.domain.states import (
    PowerState,
    SessionState,
    agent_after_power,
    power_state,
    settle,
)
from deskbroker.errors import Conflict
from deskbroker.security import TokenClaims
from deskbroker.services.context import BrokerContext
from deskbroker.services.inventory import open_center, scoped_desktop
from deskbroker.store import events
from deskbroker.store.tables import Center, Desktop, SessionRow

# What the broker records once the center accepted an action.
_AFTER = {
    PowerAction.START: PowerState.RUNNING,
    PowerAction.RESUME: PowerState.RUNNING,
    PowerAction.STOP: PowerState.STOPPED,
    PowerAction.SUSPEND: PowerState.SUSPENDED,
    PowerAction.REBOOT: PowerState.RUNNING,
    PowerAction.REBOOT_HARD: PowerState.RUNNING,
}
# The states each action makes sense from (``unknown``: let the center decide).
_FROM = {
    PowerAction.START: {PowerState.STOPPED, PowerState.UNKNOWN, PowerState.ERROR},
    PowerAction.RESUME: {PowerState.SUSPENDED, PowerState.UNKNOWN},
    PowerAction.STOP: {PowerState.RUNNING, PowerState.SUSPENDED, PowerState.UNKNOWN},
    PowerAction.SUSPEND: {PowerState.RUNNING, PowerState.UNKNOWN},
    PowerAction.REBOOT: {PowerState.RUNNING, PowerState.UNKNOWN},
    PowerAction.REBOOT_HARD: {PowerState.RUNNING, PowerState.ERROR, PowerState.UNKNOWN},
}
# Actions that take the desktop away from whoever is working on it.
_DISRUPTIVE = {PowerAction.STOP, PowerAction.SUSPEND, PowerAction.REBOOT, PowerAction.REBOOT_HARD}
# Every session state but logged out: somebody may come back to it.


@dataclass(frozen=True)
class PowerResult:
    desktop_id: str
    action: str
    was: str
    power_state: str


def power(
    ctx: BrokerContext,
    who: TokenClaims,
    desktop_id: str,
    tenant_id: str | None,
    action: PowerAction,
    *,
    force: bool = False,
) -> PowerResult:
    """Ask the desktop's center for ``action``; refuses in words what cannot be done."""
    with ctx.db.read() as session:
        desktop = scoped_desktop(session, desktop_id, tenant_id)
        center = session.get(Center, desktop.center_id)
        users = session.scalars(
            select(SessionRow.username).where(
                SessionRow.desktop_id == desktop_id,
                SessionRow.state != SessionState.LOGGED_OUT.value,
            )
        ).all()
    if center is None:
        raise Conflict(f"desktop {desktop.name} has no center")
    was = power_state(desktop.power_state)
    if was not in _FROM[action]:
        raise Conflict(f"desktop {desktop.name} is {was.value}: it cannot {action.value}")
    if action in _DISRUPTIVE and users and not force:
        raise Conflict(
            f"desktop {desktop.name} has a session of {', '.join(sorted(set(users)))} in use; "
            f"{action.value} with force to go ahead anyway"
        )
    driver = open_center(ctx, center)
    if not driver.supports(Capability.POWER):
        raise Conflict(f"desktop {desktop.name}'s center {center.name} cannot power machines")
    machine = MachineInfo(
        external_id=desktop.external_id,
        name=desktop.name,
        address=desktop.address,
        power_state=was,
    )
    # A center's refusal is a CenterError, a 502 in words.
    ctx.sources.tenant_call(
        center.tenant_id, f"{action.value} the desktop", partial(driver.power, machine, action)
    )
    target = _AFTER[action]
    with ctx.db.write() as session:
        row = session.scalars(
            select(Desktop).where(Desktop.id == desktop_id).with_for_update()
        ).first()
        if row is not None:
            power = settle(row.power_state, target)
            row.power_state = power.value
            row.agent_state = agent_after_power(row.agent_state, power).value
            events.append(
                session,
                "admin.power",
                tenant_id=row.tenant_id,
                actor=who.username,
                user_id=who.user_id,
                desktop_id=row.id,
                pool_id=row.assigned_pool_id,
                detail={"action": action.value, "was": was.value, "forced": force and bool(users)},
            )
            recorded = row.power_state
        else:
            recorded = target.value
    return PowerResult(desktop_id, action.value, was.value, recorded)

"""Power a desktop on an administrator's (or helpdesk's) word, or on its user's where
the policy allows it.

Both go through ``_carry_out``: the center is asked first, outside any transaction; the
broker then records the power state the action leads to (the next scan corrects it if
the center disagrees) and an audit event. A desktop with a session in use is only
stopped, suspended or rebooted by an administrator with ``force``: the person on it
loses their work. A user may stop or reboot the desktop they hold under their own
session (they asked), never under somebody else's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from deskbroker.centers.base import Capability, MachineInfo, PowerAction
from deskbroker.domain.states import (
    POWER_ACTIONS,
    agent_after_power,
    check_action,
    settle,
)
from deskbroker.errors import Conflict, Forbidden, NotFound
from deskbroker.security import TokenClaims
from deskbroker.services import standing, write_context
from deskbroker.services.context import BrokerContext
from deskbroker.services.inventory import open_center, scoped_desktop
from deskbroker.store import desktop_rows, events
from deskbroker.store.tables import Center, Desktop

# What a policy entry may let a user do (``user_power_actions``): the actions whose
# outcome a user can judge; suspend and hard reboot stay with administrators.
USER_ACTIONS: tuple[PowerAction, ...] = (PowerAction.START, PowerAction.STOP, PowerAction.REBOOT)


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
    """An administrator asks the desktop's center for ``action``; refuses in words what
    cannot be done. ``tenant_id`` None: any tenant's desktop (a global administrator)."""
    with ctx.db.read() as session:
        desktop = scoped_desktop(session, desktop_id, tenant_id)
        # Starting a machine disturbs nobody; stopping or rebooting the one a stronger
        # account holds, or works on, is acting on that account.
        if POWER_ACTIONS[action].disruptive:
            write_context.attach_actor(session, ctx, who)
            standing.check_people_on(session, desktop.id, f"{action.value} a desktop of")
        center = session.get(Center, desktop.center_id)
        users = desktop_rows.session_users(session, desktop_id)
    if POWER_ACTIONS[action].disruptive and users and not force:
        check_action(desktop.power_state, action, subject=f"desktop {desktop.name}")
        raise Conflict(
            f"desktop {desktop.name} has a session of {', '.join(sorted(set(users)))} in use; "
            f"{action.value} with force to go ahead anyway"
        )
    return _carry_out(
        ctx, who, desktop, center, action, kind="admin.power", forced=force and bool(users)
    )


def user_actions(ctx: BrokerContext, who: TokenClaims, pool_id: str | None) -> list[str]:
    """The power actions the user may ask of a desktop they hold in ``pool_id``: the
    ``user_power_actions`` of their policy's entry for that pool (or whose backup it is)."""
    if pool_id is None or not who.policy_id:
        return []
    policy = ctx.cache.current(ctx.db).policies.get(who.policy_id)
    allowed: set[str] = set()
    for entry in policy.entries if policy else ():
        if pool_id in (entry.pool_id, entry.backup_pool_id):
            allowed |= entry.user_power_actions
    return [a.value for a in USER_ACTIONS if a.value in allowed]


def user_power(
    ctx: BrokerContext, who: TokenClaims, desktop_id: str, action: PowerAction
) -> PowerResult:
    """The user who holds the desktop asks for ``action``, where their policy allows it."""
    with ctx.db.read() as session:
        found = desktop_rows.held_with_holder(session, desktop_id, who.tenant_id, who.user_id)
        if found is None:
            raise NotFound(f"desktop {desktop_id} is not assigned to you")
        desktop, _ = found
        center = session.get(Center, desktop.center_id)
        users = desktop_rows.session_users(session, desktop_id)
    allowed = user_actions(ctx, who, desktop.assigned_pool_id)
    if action.value not in allowed:
        may = f"you may {' or '.join(allowed)} it" if allowed else "you may not power it"
        raise Forbidden(
            f"your policy does not let you {action.value} desktop {desktop.name}; {may}"
        )
    others = sorted({u for u in users if u != who.username})
    if POWER_ACTIONS[action].disruptive and others:
        raise Conflict(
            f"desktop {desktop.name} has a session of {', '.join(others)} in use; "
            f"ask your helpdesk to {action.value} it"
        )
    return _carry_out(ctx, who, desktop, center, action, kind="user.power", forced=False)


def _carry_out(
    ctx: BrokerContext,
    who: TokenClaims,
    desktop: Desktop,
    center: Center | None,
    action: PowerAction,
    *,
    kind: str,
    forced: bool,
) -> PowerResult:
    """Ask the center (no transaction open), then record the state it leads to and
    ``kind`` as an audit event, under the desktop's row lock."""
    if center is None:
        raise Conflict(f"desktop {desktop.name} has no center")
    was = check_action(desktop.power_state, action, subject=f"desktop {desktop.name}")
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
    target = POWER_ACTIONS[action].leads_to
    with ctx.db.write() as session:
        row = desktop_rows.lock(session, desktop.id)
        if row is not None:
            power = settle(row.power_state, target)
            row.power_state = power.value
            row.agent_state = agent_after_power(row.agent_state, power).value
            events.append(
                session,
                kind,
                tenant_id=row.tenant_id,
                actor=who.username,
                user_id=who.user_id,
                desktop_id=row.id,
                pool_id=row.assigned_pool_id,
                detail={"action": action.value, "was": was.value, "forced": forced},
            )
            recorded = row.power_state
        else:
            recorded = target.value
    return PowerResult(desktop.id, action.value, was.value, recorded)

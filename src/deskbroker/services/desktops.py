"""Connect, release and queue service: what happens to a desktop after login."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from deskbroker import metrics
from deskbroker.centers.base import Capability, PowerAction
from deskbroker.domain import scans
from deskbroker.domain.offers import next_release_interval
from deskbroker.domain.states import PowerState
from deskbroker.domain.timestamps import aware
from deskbroker.errors import Conflict, NotFound
from deskbroker.protocols.descriptors import ConnectionDescriptor, build, choose
from deskbroker.security import TokenClaims
from deskbroker.services import access, quotas
from deskbroker.services.context import BrokerContext
from deskbroker.services.inventory import open_center
from deskbroker.services.queues import serve_queues
from deskbroker.store import claims, events
from deskbroker.store.tables import Center, Desktop, Pool, PoolMember, User, utcnow


@dataclass(frozen=True)
class ConnectResult:
    desktop_id: str
    desktop_name: str
    descriptor: ConnectionDescriptor


@dataclass(frozen=True)
class Starting:
    """The user's desktop is being started (or resumed): ask again in ``estimate_s``."""

    desktop_id: str
    desktop_name: str
    power_state: str
    estimate_s: int
    retry_after_s: int
    message: str


# A stopped or suspended desktop is started when its user connects.
_STARTABLE = (PowerState.STOPPED.value, PowerState.SUSPENDED.value)
# A start that has not shown a running desktop after this many estimates is sent again.
_RESEND_AFTER_ESTIMATES = 3
# Clients poll at least this often while a desktop starts, whatever the estimate says.
_POLL_S = 10


def _protocol_plan(
    ctx: BrokerContext, claims_: TokenClaims, pool_id: str | None
) -> list[dict[str, object]] | None:
    view = ctx.cache.current(ctx.db)
    policy = view.policies.get(claims_.policy_id or "")
    if policy is None:
        return None
    for entry in policy.entries:
        if pool_id in (entry.pool_id, entry.backup_pool_id) and entry.protocol_plan_id:
            return view.protocol_plans.get(entry.protocol_plan_id)
    return None


def _describe(
    ctx: BrokerContext,
    session: Session,
    who: TokenClaims,
    desktop: Desktop,
    protocol: str | None,
    client: str | None,
) -> ConnectResult:
    if desktop.power_state not in (PowerState.RUNNING.value, PowerState.UNKNOWN.value):
        raise Conflict(
            f"desktop {desktop.name} is {desktop.power_state}; it must be running to connect"
        )
    if not desktop.address:
        raise Conflict(f"desktop {desktop.name} has no network address yet")
    chosen, entry = choose(_protocol_plan(ctx, who, desktop.assigned_pool_id), protocol)  # type: ignore[arg-type]
    descriptor = build(
        chosen,
        entry,
        desktop_name=desktop.name,
        address=desktop.address,
        desktop_ports=(desktop.attributes or {}).get("ports") or {},
        username=who.username,
    )
    desktop.last_used_at = utcnow()
    if desktop.starting_since is not None:
        # Started on connect and now seen running: the marker has done its work.
        desktop.starting_since = None
    events.append(
        session,
        "connect",
        tenant_id=who.tenant_id,
        actor=who.username,
        user_id=who.user_id,
        desktop_id=desktop.id,
        pool_id=desktop.assigned_pool_id,
        detail={"protocol": chosen.value, "client": client or ""},
    )
    return ConnectResult(desktop.id, desktop.name, descriptor)


def connect(
    ctx: BrokerContext,
    who: TokenClaims,
    desktop_id: str,
    protocol: str | None,
    client: str | None,
    *,
    _after_start: bool = False,
) -> ConnectResult | Starting:
    """A descriptor for a desktop the user holds; never for anyone else's.

    A stopped or suspended desktop is started (or resumed) through its center instead,
    and the answer is ``Starting`` with an estimate; the client asks again and gets the
    descriptor once the center reports the desktop running.
    """
    with ctx.db.write() as session:
        # The holder's user row rides on the desktop's read: a revoked or disabled
        # user's token connects to nothing, at no extra statement.
        found = session.execute(
            select(Desktop, User.disabled, User.role, User.token_generation, User.tenant_id)
            .join(User, User.id == Desktop.assigned_user_id)
            .where(
                Desktop.id == desktop_id,
                Desktop.tenant_id == who.tenant_id,
                Desktop.assigned_user_id == who.user_id,
            )
        ).first()
        if found is None:
            raise NotFound(f"desktop {desktop_id} is not assigned to you")
        desktop = found[0]
        access.check_holder(who, bool(found[1]), str(found[2]), int(found[3] or 0), str(found[4]))
        startable = desktop.power_state in _STARTABLE
        # A desktop is only started for a session the tenant's quota has room for; the
        # unit is taken when the descriptor is handed out.
        quotas.admit_session(session, ctx, desktop, grant=not startable)
        if not startable:
            result = _describe(ctx, session, who, desktop, protocol, client)
    if startable:
        if _after_start:  # seen running a moment ago, stopped again since: don't loop
            return _starting(ctx, desktop, desktop.power_state, desktop.starting_since)
        return _start(ctx, who, desktop, protocol, client)
    metrics.CONNECTIONS.labels(protocol=result.descriptor.protocol).inc()
    return result


def _starting(
    ctx: BrokerContext, desktop: Desktop, power_state: str, since: datetime | None
) -> Starting:
    estimate = ctx.settings.start_estimate_s
    elapsed = 0.0 if since is None else (utcnow() - aware(since)).total_seconds()
    remaining = max(5, round(estimate - elapsed))
    late = elapsed > estimate
    return Starting(
        desktop_id=desktop.id,
        desktop_name=desktop.name,
        power_state=power_state,
        estimate_s=remaining,
        retry_after_s=min(remaining, _POLL_S),
        message=(
            f"desktop {desktop.name} is starting"
            + (", taking longer than usual" if late else "")
            + f"; it should be ready in about {remaining} seconds"
        ),
    )


def _start(
    ctx: BrokerContext,
    who: TokenClaims,
    desktop: Desktop,
    protocol: str | None,
    client: str | None,
) -> ConnectResult | Starting:
    """Poll the center once; start the desktop if nobody has just asked for that."""
    with ctx.db.read() as session:
        center = session.get(Center, desktop.center_id)
    if center is None:
        raise Conflict(f"desktop {desktop.name} has no center")
    driver = open_center(ctx, center)
    if not driver.supports(Capability.POWER):
        raise Conflict(
            f"desktop {desktop.name} is {desktop.power_state} and its center cannot start "
            "machines; ask an administrator to start it"
        )
    seen = ctx.sources.tenant_call(
        center.tenant_id, "look at your desktop", partial(driver.machine, desktop.external_id)
    )
    if seen is None:
        raise Conflict(f"desktop {desktop.name} no longer exists in its center")
    reported = seen.power_state
    if reported in (PowerState.ERROR, PowerState.DELETING, PowerState.DELETED):
        raise Conflict(f"desktop {desktop.name} is {reported.value}; ask an administrator")
    now = utcnow()
    action: PowerAction | None = None
    with ctx.db.write() as session:
        row = session.scalars(
            select(Desktop).where(Desktop.id == desktop.id).with_for_update()
        ).first()
        if row is None or row.assigned_user_id != who.user_id:
            raise NotFound(f"desktop {desktop.id} is not assigned to you")
        row.power_state = scans.next_power(row.power_state, reported)
        if reported is PowerState.RUNNING:
            if seen.address:
                row.address = seen.address
        elif reported in (PowerState.STOPPED, PowerState.SUSPENDED):
            since = row.starting_since
            resend = ctx.settings.start_estimate_s * _RESEND_AFTER_ESTIMATES
            if since is None or (now - aware(since)).total_seconds() > resend:
                # Claimed under the row lock: of several retrying clients one sends it.
                action = (
                    PowerAction.RESUME if reported is PowerState.SUSPENDED else PowerAction.START
                )
                row.starting_since = now
        since_now = row.starting_since
    if reported is PowerState.RUNNING:
        return connect(ctx, who, desktop.id, protocol, client, _after_start=True)
    if action is not None:
        try:
            ctx.sources.tenant_call(
                center.tenant_id, "start your desktop", partial(driver.power, seen, action)
            )
        except Exception:
            with ctx.db.write() as session:
                session.execute(
                    update(Desktop).where(Desktop.id == desktop.id).values(starting_since=None)
                )
            raise
        with ctx.db.write() as session:
            events.append(
                session,
                "power.start",
                tenant_id=who.tenant_id,
                actor=who.username,
                user_id=who.user_id,
                desktop_id=desktop.id,
                pool_id=desktop.assigned_pool_id,
                detail={"action": action.value, "reason": "connect", "was": reported.value},
            )
    return _starting(ctx, desktop, reported.value, since_now)


def _note_release(session: Session, pool_id: str) -> None:
    pool = session.get(Pool, pool_id)
    if pool is None:
        return
    now = datetime.now(UTC)
    if pool.last_release_at is not None:
        last = aware(pool.last_release_at)
        pool.release_interval_s = next_release_interval(
            pool.release_interval_s, max(1.0, (now - last).total_seconds())
        )
    pool.last_release_at = now


def release(
    session: Session, *, desktop_id: str, tenant_id: str, user_id: str | None, actor: str
) -> None:
    """End an assignment and hand the desktop to whoever waits longest for its pool."""
    desktop = session.scalars(
        select(Desktop).where(Desktop.id == desktop_id, Desktop.tenant_id == tenant_id)
    ).first()
    if desktop is None or (user_id is not None and desktop.assigned_user_id != user_id):
        raise NotFound(f"desktop {desktop_id} is not assigned to you")
    if desktop.assigned_user_id is None:
        raise Conflict(f"desktop {desktop.name} is not assigned to anyone")
    pool_id = desktop.assigned_pool_id
    previous = desktop.assigned_user_id
    claims.unassign(session, desktop_id=desktop.id, user_id=previous)
    events.append(
        session,
        "release",
        tenant_id=tenant_id,
        actor=actor,
        user_id=previous,
        desktop_id=desktop.id,
        pool_id=pool_id,
    )
    if pool_id is not None:
        _note_release(session, pool_id)
    serve_queues(session, tenant_id)


def is_member(session: Session, pool_id: str, desktop_id: str) -> bool:
    return (
        session.scalar(
            select(PoolMember.desktop_id).where(
                PoolMember.pool_id == pool_id, PoolMember.desktop_id == desktop_id
            )
        )
        is not None
    )

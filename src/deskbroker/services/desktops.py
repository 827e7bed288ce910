"""Connect, release and queue service: what happens to a desktop after login."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial

from deskbroker import metrics
from deskbroker.centers.base import Capability, PowerAction
from deskbroker.domain import scans
from deskbroker.domain.offers import next_release_interval
from deskbroker.domain.states import START_ON_CONNECT, PowerState
from deskbroker.domain.timestamps import aware
from deskbroker.errors import Conflict, NotFound, QuotaReached
from deskbroker.protocols.descriptors import (
    HTML5_NATIVE,
    ClientKind,
    ConnectionDescriptor,
    Protocol,
    build,
    choose,
    with_launch_url,
)
from deskbroker.protocols.plans import PlanEntry
from deskbroker.security import TokenClaims
from deskbroker.services import access, gateway, pool_upkeep, quotas
from deskbroker.services.context import BrokerContext
from deskbroker.services.inventory import open_center
from deskbroker.services.queues import serve_queues
from deskbroker.store import claims, desktop_rows, events
from deskbroker.store.db import Unit
from deskbroker.store.tables import Center, Desktop, Pool, utcnow


@dataclass(frozen=True)
class ConnectResult:
    desktop_id: str
    desktop_name: str
    descriptor: ConnectionDescriptor
    # "direct": the viewer reaches the desktop itself; "gateway": through the gateway.
    route: gateway.Route = "direct"
    # An HTML5 desktop's page on the gateway, carrying its ticket.
    launch_url: str | None = None
    # When the gateway stops honouring this connection's ticket (unix time).
    ticket_expires_at: int | None = None
    # A native viewer through the gateway: the ticket to redeem for a port forward, and
    # how to rebuild the descriptor for the gateway's host and port (after the write unit).
    forward_ticket: str = ""
    rebuild: Callable[[str, int], ConnectionDescriptor] | None = None
    # What the connect's unit changed on the desktop, to undo should the forward fail,
    # and the ``connect`` event, written once the forward is open.
    undo: _Undo | None = None
    event_detail: dict[str, str] | None = None


@dataclass(frozen=True)
class _Undo:
    """The desktop's fields before a connect through a port forward, and what it set."""

    granted_before: datetime | None
    granted: datetime | None
    used_before: datetime | None
    used: datetime | None
    pool_id: str | None


@dataclass(frozen=True)
class Starting:
    """The user's desktop is being started (or resumed): ask again in ``estimate_s``."""

    desktop_id: str
    desktop_name: str
    power_state: str
    estimate_s: int
    retry_after_s: int
    message: str


@dataclass(frozen=True)
class _Asked:
    """What the client said of itself, for the protocol plan's choice."""

    client_kind: ClientKind | None
    accepts: tuple[str, ...]


# A start that has not shown a running desktop after this many estimates is sent again.
_RESEND_AFTER_ESTIMATES = 3
# Clients poll at least this often while a desktop starts, whatever the estimate says.
_POLL_S = 10


def _protocol_plan(
    ctx: BrokerContext, claims_: TokenClaims, pool_id: str | None
) -> list[PlanEntry] | None:
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
    session: Unit,
    who: TokenClaims,
    desktop: Desktop,
    protocol: str | None,
    client: str | None,
    how: _Asked,
    granted_before: datetime | None,
) -> ConnectResult:
    if desktop.power_state not in (PowerState.RUNNING.value, PowerState.UNKNOWN.value):
        raise Conflict(
            f"desktop {desktop.name} is {desktop.power_state}; it must be running to connect"
        )
    if not desktop.address:
        raise Conflict(f"desktop {desktop.name} has no network address yet")
    chosen, entry = choose(
        _protocol_plan(ctx, who, desktop.assigned_pool_id),
        protocol,
        how.client_kind,
        how.accepts,
        # Without a gateway no page can reach a desktop: a browser downloads a file.
        in_page=gateway.configured(ctx.settings),
    )
    descriptor = build(
        chosen,
        entry,
        desktop_name=desktop.name,
        address=desktop.address,
        desktop_ports=(desktop.attributes or {}).get("ports") or {},
        username=who.username,
    )
    direct_networks: list[str] = []
    if gateway.configured(ctx.settings) and chosen not in HTML5_NATIVE:
        # Only a native viewer can connect directly: the center's client networks matter.
        center = session.get(Center, desktop.center_id)
        direct_networks = list(center.direct_networks or []) if center is not None else []
    path = gateway.route(ctx.settings, chosen, client, direct_networks)
    plan = gateway.Plan(route="direct")
    if path == "gateway":
        plan = gateway.mint(
            ctx.settings,
            user_id=who.user_id,
            username=who.username,
            tenant_id=who.tenant_id,
            desktop_id=desktop.id,
            desktop_name=desktop.name,
            protocol=chosen,
            host=descriptor.host,
            port=descriptor.port,
            client=client,
            host_keys=list(desktop.ssh_host_keys or []) if chosen is Protocol.HTML5_SSH else (),
        )
    launch_url = None
    if chosen in HTML5_NATIVE:
        launch_url = gateway.launch_url(ctx.settings, chosen, plan.ticket)
        descriptor = with_launch_url(descriptor, launch_url)
    used_before = desktop.last_used_at
    desktop.last_used_at = utcnow()
    if desktop.starting_since is not None:
        # Started on connect and now seen running: the marker has done its work.
        desktop.starting_since = None
    detail = {"protocol": chosen.value, "client": client or "", "route": path}
    forward = path == "gateway" and launch_url is None
    if not forward:
        _connect_event(session, who, desktop.id, desktop.assigned_pool_id, detail)
    desktop_name, username = desktop.name, who.username
    return ConnectResult(
        desktop.id,
        desktop.name,
        descriptor,
        route=path,
        launch_url=launch_url,
        ticket_expires_at=plan.expires_at,
        forward_ticket=plan.ticket if forward else "",
        rebuild=(
            lambda host, port: build(
                chosen,
                entry,
                desktop_name=desktop_name,
                address=host,
                desktop_ports={chosen.value: port},
                username=username,
            )
        )
        if forward
        else None,
        undo=_Undo(
            granted_before,
            desktop.connect_granted_at,
            used_before,
            desktop.last_used_at,
            desktop.assigned_pool_id,
        )
        if forward
        else None,
        event_detail=detail if forward else None,
    )


def _connect_event(
    session: Unit, who: TokenClaims, desktop_id: str, pool_id: str | None, detail: dict[str, str]
) -> None:
    events.append(
        session,
        "connect",
        tenant_id=who.tenant_id,
        actor=who.username,
        user_id=who.user_id,
        desktop_id=desktop_id,
        pool_id=pool_id,
        detail=detail,
    )


def _through_gateway(ctx: BrokerContext, who: TokenClaims, result: ConnectResult) -> ConnectResult:
    """A native viewer's descriptor pointed at the gateway's port forward (a network call
    to the gateway, made after the write unit).

    Should the gateway refuse or not answer, what the connect's unit changed is undone
    (the quota unit it held, ``last_used_at``) and no ``connect`` event is written: a
    connection that never happened leaves nothing behind but a ``connect.failed`` event.
    """
    if not result.forward_ticket or result.rebuild is None:
        return result
    try:
        port = gateway.open_forward(ctx.settings, result.forward_ticket)
    except Exception as exc:
        _undo_connect(ctx, who, result, exc)
        raise
    descriptor = result.rebuild(gateway.forward_host(ctx.settings), port)
    pool_id = result.undo.pool_id if result.undo is not None else None
    with ctx.db.write() as session:
        _connect_event(session, who, result.desktop_id, pool_id, result.event_detail or {})
    return replace(result, descriptor=descriptor, forward_ticket="", rebuild=None)


def _same(stored: datetime | None, mine: datetime | None) -> bool:
    return stored is not None and mine is not None and aware(stored) == aware(mine)


def _undo_connect(
    ctx: BrokerContext, who: TokenClaims, result: ConnectResult, exc: Exception
) -> None:
    undo = result.undo
    with ctx.db.write() as session:
        row = desktop_rows.lock(session, result.desktop_id)
        if row is None or undo is None:
            return
        # Only what is still this connect's own: a connect that came since keeps its mark.
        if _same(row.connect_granted_at, undo.granted):
            row.connect_granted_at = undo.granted_before
        if _same(row.last_used_at, undo.used):
            row.last_used_at = undo.used_before
        events.append(
            session,
            "connect.failed",
            tenant_id=who.tenant_id,
            actor=who.username,
            user_id=who.user_id,
            desktop_id=row.id,
            pool_id=row.assigned_pool_id,
            detail={**(result.event_detail or {}), "reason": str(exc)[:300]},
        )


def connect(
    ctx: BrokerContext,
    who: TokenClaims,
    desktop_id: str,
    protocol: str | None,
    client: str | None,
    *,
    client_kind: ClientKind | None = None,
    accepts: Sequence[str] | None = None,
    _after_start: bool = False,
) -> ConnectResult | Starting:
    """A descriptor for a desktop the user holds; never for anyone else's.

    A stopped or suspended desktop is started (or resumed) through its center instead,
    and the answer is ``Starting`` with an estimate; the client asks again and gets the
    descriptor once the center reports the desktop running. Without ``protocol`` the
    plan's choice follows ``client_kind`` and the protocols the client ``accepts``.
    """
    how = _Asked(client_kind, tuple(accepts or ()))
    # The quota and the protocol plan read the per-node configuration cache inside the
    # unit, as held: its age is checked here, with no unit open.
    ctx.cache.current(ctx.db)
    try:
        with ctx.db.write() as session:
            # The holder's user row rides on the desktop's read: a revoked or disabled
            # user's token connects to nothing, at no extra statement.
            found = desktop_rows.held_with_holder(session, desktop_id, who.tenant_id, who.user_id)
            if found is None:
                raise NotFound(f"desktop {desktop_id} is not assigned to you")
            desktop, holder = found
            access.check_holder(
                who, holder.disabled, holder.role, holder.token_generation, holder.tenant_id
            )
            if not _after_start:  # the second half of one connect is not another
                # Counted once the token is known to be the holder's own and current: a
                # revoked copy cannot use up its owner's connects.
                ctx.user_activity.connect(who.user_id, ctx.settings.user_connects_per_minute)
            startable = desktop.power_state in START_ON_CONNECT
            granted_before = desktop.connect_granted_at
            # A desktop is only started for a session the tenant's quota has room for;
            # the unit is taken when the descriptor is handed out.
            quotas.admit_session(session, ctx, desktop, grant=not startable)
            if not startable:
                result = _describe(
                    ctx, session, who, desktop, protocol, client, how, granted_before
                )
    except QuotaReached as refused:
        # The connect's unit is rolled back whole; the refusal is an event of its own.
        quotas.record_refusal(ctx, who.tenant_id, who.username, who.user_id, desktop_id, refused)
        raise
    if startable:
        if _after_start:  # seen running a moment ago, stopped again since: don't loop
            return _starting(ctx, desktop, desktop.power_state, desktop.starting_since)
        return _start(ctx, who, desktop, protocol, client, how)
    result = _through_gateway(ctx, who, result)
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
    how: _Asked,
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
    if seen.partial:
        # The center knows the machine but not its state (the part of the cloud that
        # holds it does not answer): nothing to record, nothing to start.
        raise Conflict(
            f"desktop {desktop.name} cannot be reached now: the part of its cloud that holds "
            "it does not answer; try again in a few minutes"
        )
    reported = seen.power_state
    if reported in (PowerState.ERROR, PowerState.DELETING, PowerState.DELETED):
        raise Conflict(f"desktop {desktop.name} is {reported.value}; ask an administrator")
    now = utcnow()
    action: PowerAction | None = None
    with ctx.db.write() as session:
        row = desktop_rows.lock(session, desktop.id)
        if row is None or row.assigned_user_id != who.user_id:
            raise NotFound(f"desktop {desktop.id} is not assigned to you")
        row.power_state = scans.next_power(row.power_state, reported)
        if reported is PowerState.RUNNING:
            if seen.address:
                row.address = seen.address
        elif reported in START_ON_CONNECT:
            since = row.starting_since
            resend = ctx.settings.start_estimate_s * _RESEND_AFTER_ESTIMATES
            if since is None or (now - aware(since)).total_seconds() > resend:
                # Claimed under the row lock: of several retrying clients one sends it.
                action = START_ON_CONNECT[reported]
                row.starting_since = now
        since_now = row.starting_since
    if reported is PowerState.RUNNING:
        return connect(
            ctx,
            who,
            desktop.id,
            protocol,
            client,
            client_kind=how.client_kind,
            accepts=how.accepts,
            _after_start=True,
        )
    if action is not None:
        try:
            ctx.sources.tenant_call(
                center.tenant_id, "start your desktop", partial(driver.power, seen, action)
            )
        except Exception:
            with ctx.db.write() as session:
                desktop_rows.clear_starting(session, desktop.id)
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


def _note_release(session: Unit, pool_id: str) -> None:
    # Locked as read: two releases of the pool at once each moved the average from the
    # same reading, and one of the two intervals was lost.
    pool = session.get(Pool, pool_id, with_for_update={"key_share": True})
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
    session: Unit, *, desktop_id: str, tenant_id: str, user_id: str | None, actor: str
) -> None:
    """End an assignment and hand the desktop to whoever waits longest for its pool."""
    desktop = desktop_rows.of_tenant(session, desktop_id, tenant_id)
    if desktop is None or (user_id is not None and desktop.assigned_user_id != user_id):
        raise NotFound(f"desktop {desktop_id} is not assigned to you")
    if desktop.assigned_user_id is None:
        raise Conflict(f"desktop {desktop.name} is not assigned to anyone")
    pool_id = desktop.assigned_pool_id
    previous = desktop.assigned_user_id
    if not claims.unassign(session, desktop_id=desktop.id, user_id=previous):
        # Released since it was read (a second release at once, committed first):
        # answered as if it came after, not released, counted and announced twice.
        if user_id is not None:
            raise NotFound(f"desktop {desktop_id} is not assigned to you")
        raise Conflict(f"desktop {desktop.name} is not assigned to anyone")
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
        # A pool that reverts desktops on release takes this one out before the queue
        # is served: the next user gets it fresh, after the engine rebuilt it.
        pool_upkeep.after_release(
            session, desktop_id=desktop.id, tenant_id=tenant_id, pool_id=pool_id
        )
    serve_queues(session, tenant_id)


def is_member(session: Unit, pool_id: str, desktop_id: str) -> bool:
    """Whether the desktop is a member of the pool."""
    return desktop_rows.is_member(session, pool_id, desktop_id)

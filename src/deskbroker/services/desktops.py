"""Connect, release and queue service: what happens to a desktop after login."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from deskbroker import metrics
from deskbroker.domain.offers import OfferOrdering, next_release_interval
from deskbroker.domain.states import PowerState
from deskbroker.errors import Conflict, NotFound
from deskbroker.protocols.descriptors import ConnectionDescriptor, build, choose
from deskbroker.security import TokenClaims
from deskbroker.services.context import BrokerContext
from deskbroker.store import claims, events, membership
from deskbroker.store.tables import Desktop, Pool, PoolMember, QueueEntry, utcnow


@dataclass(frozen=True)
class ConnectResult:
    desktop_id: str
    desktop_name: str
    descriptor: ConnectionDescriptor


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


def connect(
    ctx: BrokerContext, who: TokenClaims, desktop_id: str, protocol: str | None, client: str | None
) -> ConnectResult:
    """A descriptor for a desktop the user holds; never for anyone else's."""
    with ctx.db.write() as session:
        desktop = session.scalars(
            select(Desktop).where(
                Desktop.id == desktop_id,
                Desktop.tenant_id == who.tenant_id,
                Desktop.assigned_user_id == who.user_id,
            )
        ).first()
        if desktop is None:
            raise NotFound(f"desktop {desktop_id} is not assigned to you")
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
    metrics.CONNECTIONS.labels(protocol=chosen.value).inc()
    return ConnectResult(desktop.id, desktop.name, descriptor)


def _note_release(session: Session, pool_id: str) -> None:
    pool = session.get(Pool, pool_id)
    if pool is None:
        return
    now = datetime.now(UTC)
    if pool.last_release_at is not None:
        last = pool.last_release_at
        if last.tzinfo is None:
            last = last.replace(tzinfo=UTC)
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


def serve_queues(session: Session, tenant_id: str) -> int:
    """Give free desktops to waiting users, oldest ticket first; returns how many."""
    served = 0
    pool_ids = session.scalars(
        select(QueueEntry.pool_id).where(QueueEntry.tenant_id == tenant_id).distinct()
    ).all()
    for pool_id in pool_ids:
        while True:
            head = claims.next_in_queue(session, pool_id)
            if head is None:
                break
            entry_id, user_id, _ = head
            got = claims.claim(
                session,
                pool_id=pool_id,
                user_id=user_id,
                kind="persistent",
                ordering=OfferOrdering.RUNNING_FIRST,
            )
            if got is None:
                break
            claims.serve_entry(session, entry_id, pool_id)
            events.append(
                session,
                "assign",
                tenant_id=tenant_id,
                actor="queue",
                user_id=user_id,
                desktop_id=got.id,
                pool_id=pool_id,
                detail={"reason": "queue"},
            )
            served += 1
    return served


def refresh_pools(session: Session, tenant_id: str) -> None:
    """After desktops or pools change: fix membership, then serve waiting users."""
    membership.refresh(session, tenant_id)
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


def mark_used(session: Session, desktop_id: str) -> None:
    session.execute(update(Desktop).where(Desktop.id == desktop_id).values(last_used_at=utcnow()))

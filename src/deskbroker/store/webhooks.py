"""Events out, the SQL: deliveries claimed by lease and their outcome recorded, the
reads of the admin API, the event stream and the usage report. The fan-out that makes
the deliveries is ``store/fanout.py``; the setters it vets are read here.

The event log is written by every request in its own transaction; nothing here runs on
a request's path but the reads.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from deskbroker.domain import webhooks as rules
from deskbroker.domain.timestamps import aware
from deskbroker.domain.webhooks import DeliveryState
from deskbroker.store.fanout import horizon
from deskbroker.store.tables import (
    Event,
    SessionRow,
    Tenant,
    User,
    Webhook,
    WebhookDelivery,
)


@dataclass(frozen=True)
class Claimed:
    """A delivery leased for posting, with what the post needs."""

    id: str
    webhook_id: str
    event_id: int
    url: str
    secret_sealed: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int


@dataclass(frozen=True)
class Setter:
    """An enabled webhook and the user who last set it up, as their row is now (the
    user's columns all None when the user was deleted)."""

    webhook_id: str
    webhook_tenant_id: str
    webhook_name: str
    user_id: str
    username: str | None
    tenant_id: str | None
    role: str | None
    disabled: bool | None
    identity_source_id: str | None
    groups: list[Any] | None
    attributes: dict[str, Any] | None


def setters(session: Session, user_id: str | None = None) -> list[Setter]:
    """Every enabled webhook that names its setter (``user_id``, when given), with that
    user: one query."""
    only = [Webhook.set_by_user_id == user_id] if user_id is not None else []
    rows = session.execute(
        select(
            Webhook.id,
            Webhook.tenant_id,
            Webhook.name,
            Webhook.set_by_user_id,
            User.username,
            User.tenant_id,
            User.role,
            User.disabled,
            User.identity_source_id,
            User.groups,
            User.attributes,
        )
        # Outer: a deleted setter is the first reason to switch a webhook off.
        .outerjoin(User, User.id == Webhook.set_by_user_id)
        .where(Webhook.enabled.is_(True), Webhook.set_by_user_id.is_not(None), *only)
        .order_by(Webhook.id)
    ).all()
    return [Setter(*row) for row in rows]


def switch_off(session: Session, webhook_id: str, set_by_user_id: str, now: datetime) -> bool:
    """Disable a webhook if it is still enabled and still set by ``set_by_user_id``;
    whether it was. Compare-and-set: an administrator who enabled it again meanwhile
    made themselves its setter, and their say stands."""
    switched = session.execute(
        update(Webhook)
        .where(
            Webhook.id == webhook_id,
            Webhook.enabled.is_(True),
            Webhook.set_by_user_id == set_by_user_id,
        )
        .values(enabled=False, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    return int(switched) == 1


def fail_pending(session: Session, webhook_id: str, now: datetime, why: str) -> int:
    """A switched-off webhook's queued deliveries, failed with ``why``: kept (for a
    retry once it is enabled again) but never posted, nor left in the due deliveries'
    index for every claim to step over. One under way (leased) finishes as it goes."""
    return int(
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.webhook_id == webhook_id,
                WebhookDelivery.state == DeliveryState.PENDING.value,
                or_(
                    WebhookDelivery.lease_expires_at.is_(None),
                    WebhookDelivery.lease_expires_at < now,
                ),
            )
            .values(state=DeliveryState.FAILED.value, last_error=why[:2000], updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
    )


def claim(
    session: Session,
    *,
    owner: str,
    now: datetime,
    ttl_s: float,
    per_webhook: int,
    per_tenant: int,
    limit: int,
) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries, at most ``per_webhook`` leased at once per
    webhook and ``per_tenant`` per tenant (those leased by any broker counted), each
    webhook's oldest first.

    Chosen webhook by webhook, in random order: the due deliveries of a receiver that
    is down (at its bound, or with a long backlog) never stand in front of another
    webhook's, and a tenant at its bound (however many webhooks it has) is skipped, so
    one tenant's dead receivers delay nobody else's events."""
    if limit <= 0:
        return []
    free = or_(WebhookDelivery.lease_expires_at.is_(None), WebhookDelivery.lease_expires_at < now)
    pending = WebhookDelivery.state == DeliveryState.PENDING.value
    leased = session.execute(
        select(WebhookDelivery.webhook_id, WebhookDelivery.tenant_id, func.count())
        .where(pending, WebhookDelivery.lease_expires_at >= now)
        .group_by(WebhookDelivery.webhook_id, WebhookDelivery.tenant_id)
    ).all()
    busy: dict[str, int] = {}
    tenant_busy: dict[str, int] = {}
    for hook_id, tenant_id, count in leased:
        busy[hook_id] = busy.get(hook_id, 0) + count
        tenant_busy[tenant_id] = tenant_busy.get(tenant_id, 0) + count
    # Webhook by webhook, one index probe each (``ix_webhook_deliveries_hook_due``):
    # never a walk over every pending delivery, however long one dead receiver's queue.
    due_here = exists().where(
        WebhookDelivery.webhook_id == Webhook.id,
        pending,
        WebhookDelivery.next_attempt_at <= now,
        free,
    )
    due = [
        (hook_id, tenant_id)
        for hook_id, tenant_id in session.execute(
            # A webhook switched off posts nothing, not even what it had queued: its
            # deliveries wait until it is enabled again.
            select(Webhook.id, Webhook.tenant_id).where(Webhook.enabled.is_(True), due_here)
        ).all()
        if busy.get(hook_id, 0) < per_webhook
    ]
    random.shuffle(due)
    picked: list[str] = []
    for hook_id, tenant_id in due:
        if len(picked) >= limit:
            break
        room = min(
            per_webhook - busy.get(hook_id, 0),
            per_tenant - tenant_busy.get(tenant_id, 0),
            limit - len(picked),
        )
        if room <= 0:
            continue  # this tenant is at its bound: the next webhook may be another's
        got = session.scalars(
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.webhook_id == hook_id,
                pending,
                WebhookDelivery.next_attempt_at <= now,
                free,
            )
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.event_id)
            .limit(room)
            .with_for_update(skip_locked=True)
        ).all()
        tenant_busy[tenant_id] = tenant_busy.get(tenant_id, 0) + len(got)
        picked += got
    if not picked:
        return []
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(picked), free)
        .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=ttl_s))
        .execution_options(synchronize_session=False)
    )
    rows = session.execute(
        select(
            WebhookDelivery.id,
            WebhookDelivery.webhook_id,
            WebhookDelivery.event_id,
            Webhook.url,
            Webhook.secret_sealed,
            WebhookDelivery.payload,
            WebhookDelivery.attempts,
            Webhook.max_attempts,
        )
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(WebhookDelivery.id.in_(picked), WebhookDelivery.lease_owner == owner)
        .order_by(WebhookDelivery.event_id)
    ).all()
    return [Claimed(*row) for row in rows]


def record(
    session: Session,
    delivery: Claimed,
    *,
    owner: str,
    now: datetime,
    status: int | None,
    error: str,
    delivered: bool,
    retry_at: datetime | None,
) -> None:
    """One attempt's outcome, if this broker still holds the lease: delivered, tried
    again at ``retry_at``, or failed for good (``retry_at`` None and not delivered)."""
    if delivered:
        state: Any = DeliveryState.DELIVERED.value
    elif retry_at is None:
        state = DeliveryState.FAILED.value
    else:
        # Tried again only while its webhook is on: one switched off while this attempt
        # was out keeps nothing pending to post later (as ``fail_pending`` does).
        state = case(
            (
                select(Webhook.enabled)
                .where(Webhook.id == WebhookDelivery.webhook_id)
                .scalar_subquery()
                .is_(True),
                DeliveryState.PENDING.value,
            ),
            else_=DeliveryState.FAILED.value,
        )
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery.id, WebhookDelivery.lease_owner == owner)
        .values(
            state=state,
            attempts=WebhookDelivery.attempts + 1,
            last_status=status,
            last_error=error[:2000],
            next_attempt_at=retry_at or now,
            delivered_at=now if delivered else None,
            lease_owner=None,
            lease_expires_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )


def deliveries(
    session: Session,
    webhook_id: str,
    *,
    state: str | None,
    limit: int,
    offset: int,
) -> tuple[list[WebhookDelivery], int]:
    """A webhook's deliveries, newest first, and how many there are."""
    where = [WebhookDelivery.webhook_id == webhook_id]
    if state is not None:
        where.append(WebhookDelivery.state == state)
    total = session.execute(select(func.count()).where(*where)).scalar_one()
    rows = session.execute(
        select(WebhookDelivery)
        .where(*where)
        .order_by(WebhookDelivery.event_id.desc(), WebhookDelivery.id)
        .limit(limit)
        .offset(offset)
    ).scalars()
    return list(rows), int(total)


def retry(session: Session, webhook_id: str, now: datetime) -> int:
    """Failed deliveries of a webhook pending again, from their first attempt (the
    caller refuses this for a webhook switched off)."""
    return int(
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.webhook_id == webhook_id,
                WebhookDelivery.state == DeliveryState.FAILED.value,
            )
            .values(state=DeliveryState.PENDING.value, attempts=0, next_attempt_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
    )


def stream(
    session: Session, tenant_id: str | None, after: int, limit: int = 200
) -> tuple[list[Event], int]:
    """The events after ``after`` up to the fan-out's horizon, of ``tenant_id`` (every
    tenant's for ``None``), at most ``limit``, and the id to resume after. Stops at the
    horizon so the stream and the webhooks see the same events in the same order, none
    skipped for being committed late."""
    top = horizon(session)
    if after >= top:
        return [], after
    where = [Event.id > after, Event.id <= top]
    if tenant_id is not None:
        where.append(Event.tenant_id == tenant_id)
    rows = list(
        session.execute(select(Event).where(*where).order_by(Event.id).limit(limit)).scalars()
    )
    return rows, (rows[-1].id if len(rows) >= limit else top)


def count_locked(session: Session, tenant_id: str) -> int:
    """How many webhooks the tenant has, its row locked first until the transaction
    ends: two brokers creating its webhooks at once count one after the other, so
    neither takes a place the other took (``FOR NO KEY UPDATE`` leaves the foreign-key
    checks of other writers alone; SQLite's ``BEGIN IMMEDIATE`` serialises writers)."""
    session.execute(
        select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True)
    ).first()
    return int(
        session.scalar(
            select(func.count()).select_from(Webhook).where(Webhook.tenant_id == tenant_id)
        )
        or 0
    )


def tenants(session: Session) -> list[tuple[str, str]]:
    """Every tenant's id and name, by name."""
    return [
        (r[0], r[1]) for r in session.execute(select(Tenant.id, Tenant.name).order_by(Tenant.name))
    ]


def sessions_in(
    session: Session, tenant_id: str, start: datetime, after: datetime
) -> list[rules.Interval]:
    """The tenant's sessions open at some moment of ``[start, after)``."""
    rows = session.execute(
        select(SessionRow.desktop_id, SessionRow.started_at, SessionRow.ended_at).where(
            SessionRow.tenant_id == tenant_id,
            SessionRow.started_at < after,
            or_(SessionRow.ended_at.is_(None), SessionRow.ended_at > start),
        )
    ).all()
    return [rules.Interval(d, aware(s), aware(e) if e is not None else None) for d, s, e in rows]


def purge_finished(session: Session, before: datetime) -> int:
    """Delivered and failed deliveries older than ``before`` (retention)."""
    return int(
        session.execute(
            delete(WebhookDelivery).where(
                and_(
                    WebhookDelivery.state != DeliveryState.PENDING.value,
                    WebhookDelivery.updated_at < before,
                )
            )
        ).rowcount  # type: ignore[attr-defined]
    )

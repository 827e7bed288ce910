"""Events out: a tenant's webhooks, the outbox of their deliveries, and the cursor up to
which the event log has been fanned out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from deskbroker.domain.webhooks import DeliveryState
from deskbroker.store.tables.base import (
    Base,
    _created,
    _id,
    _one_of,
    _tenant,
    _updated,
    utcnow,
)


class Webhook(Base):
    """Where a tenant wants its events posted, and which kinds. The signing secret is
    sealed in the secret box and never read back through the API."""

    __tablename__ = "webhooks"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    name: Mapped[str] = mapped_column(String(100))
    url: Mapped[str] = mapped_column(String(2000))
    kinds: Mapped[list[Any]] = mapped_column(default=list)
    secret_sealed: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    max_attempts: Mapped[int] = mapped_column(Integer, default=8)
    # Who last created or changed it: they vouch for where the event log goes, so it
    # delivers only while they may read events (the fan-out switches it off once they
    # are gone, disabled or lose events:read). No foreign key, so that deleting the user
    # is neither refused nor cascaded. None: made before this was recorded (0010).
    set_by_user_id: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class WebhookDelivery(Base):
    """One event for one webhook: the persistent outbox row the engine posts from, tried
    again with back-off until delivered or ``max_attempts`` is reached (then failed)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "event_id"),
        _one_of("state", DeliveryState),
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        # A claim asks each webhook for its oldest due delivery, and counts the leased
        # ones: both by index, however long a dead receiver's queue (migration 0013).
        Index(
            "ix_webhook_deliveries_hook_due", "webhook_id", "state", "next_attempt_at", "event_id"
        ),
        Index("ix_webhook_deliveries_lease", "lease_expires_at"),
    )
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    webhook_id: Mapped[str] = mapped_column(
        ForeignKey("webhooks.id", ondelete="CASCADE"), index=True
    )
    event_id: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(20), default=DeliveryState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(100), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)


class EventCursor(Base):
    """How far a reader of the event log has got (``webhooks``: the fan-out into
    deliveries, which is also the horizon of the event stream)."""

    __tablename__ = "event_cursors"
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    last_id: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = _updated()

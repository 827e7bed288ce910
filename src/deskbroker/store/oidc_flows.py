"""OpenID Connect sign-ins under way: created at the start, consumed exactly once.

Rows are keyed by a hash of the secret the browser or CLI holds: the ``state``, the
device handle, or the one-time code a finished portal sign-in hands the browser (a
``handoff`` row, holding the sealed answer until the portal redeems it). They outlive
their expiry by an hour so that a replayed ``state`` is told apart from an unknown one,
then the next start removes them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.orm import Session

from deskbroker.domain.timestamps import aware
from deskbroker.store.tables import OidcFlow

# How long a finished or expired flow is kept to recognise a replay.
REPLAY_MEMORY = timedelta(hours=1)


@dataclass(frozen=True)
class FlowRecord:
    id: str
    kind: str
    tenant_id: str
    identity_source_id: str
    nonce: str | None
    sealed: str
    redirect_uri: str
    return_to: str | None
    interval_s: int
    expires_at: datetime
    used_at: datetime | None
    browser_binding: str | None = None

    def expired(self, now: datetime) -> bool:
        return aware(self.expires_at) <= now


def flow_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(
    session: Session,
    *,
    key: str,
    kind: str,
    tenant_id: str,
    identity_source_id: str,
    sealed: str,
    ttl_s: int,
    nonce: str | None = None,
    redirect_uri: str = "",
    return_to: str | None = None,
    browser_binding: str | None = None,
    interval_s: int = 5,
) -> None:
    now = datetime.now(UTC)
    session.execute(delete(OidcFlow).where(OidcFlow.expires_at < now - REPLAY_MEMORY))
    session.execute(
        insert(OidcFlow).values(
            id=key,
            kind=kind,
            tenant_id=tenant_id,
            identity_source_id=identity_source_id,
            nonce=nonce,
            sealed=sealed,
            redirect_uri=redirect_uri,
            return_to=return_to,
            browser_binding=browser_binding,
            interval_s=interval_s,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
        )
    )


def find(session: Session, key: str, kind: str) -> FlowRecord | None:
    row = session.execute(
        select(
            OidcFlow.id,
            OidcFlow.kind,
            OidcFlow.tenant_id,
            OidcFlow.identity_source_id,
            OidcFlow.nonce,
            OidcFlow.sealed,
            OidcFlow.redirect_uri,
            OidcFlow.return_to,
            OidcFlow.interval_s,
            OidcFlow.expires_at,
            OidcFlow.used_at,
            OidcFlow.browser_binding,
        ).where(OidcFlow.id == key, OidcFlow.kind == kind)
    ).first()
    return FlowRecord(*row) if row is not None else None


def consume(session: Session, key: str) -> bool:
    """Marks the flow used; False when it already was (a replay or a second poller)."""
    done = session.execute(
        update(OidcFlow)
        .where(OidcFlow.id == key, OidcFlow.used_at.is_(None))
        .values(used_at=datetime.now(UTC))
    )
    return bool(getattr(done, "rowcount", 0) == 1)


def redeem(session: Session, key: str) -> bool:
    """Marks a hand-off used and forgets its sealed answer: a code is good once, on any
    broker; False when it was redeemed already (or has expired)."""
    done = session.execute(
        update(OidcFlow)
        .where(
            OidcFlow.id == key,
            OidcFlow.kind == "handoff",
            OidcFlow.used_at.is_(None),
            OidcFlow.expires_at > datetime.now(UTC),
        )
        .values(used_at=datetime.now(UTC), sealed="")
    )
    return bool(getattr(done, "rowcount", 0) == 1)


def take_poll_turn(session: Session, key: str, interval_s: int) -> bool:
    """Claims the right to ask the provider now; False when the last ask was too recent.

    One statement, so two brokers polled at once for the same device ask only once.
    """
    now = datetime.now(UTC)
    done = session.execute(
        update(OidcFlow)
        .where(
            OidcFlow.id == key,
            OidcFlow.used_at.is_(None),
            or_(OidcFlow.next_poll_at.is_(None), OidcFlow.next_poll_at <= now),
        )
        .values(interval_s=interval_s, next_poll_at=now + timedelta(seconds=interval_s))
    )
    return bool(getattr(done, "rowcount", 0) == 1)


def slow_down(session: Session, key: str, interval_s: int) -> None:
    """The provider asked for a longer interval (RFC 8628 ``slow_down``)."""
    session.execute(
        update(OidcFlow)
        .where(OidcFlow.id == key)
        .values(
            interval_s=interval_s,
            next_poll_at=datetime.now(UTC) + timedelta(seconds=interval_s),
        )
    )

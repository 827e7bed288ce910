"""What happens on desktops: the queue, sessions, agent actions, the event log and
agent enrolment."""

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

from deskbroker.domain.states import (
    EnrolmentState,
    SessionState,
)
from deskbroker.store.tables.base import (
    Base,
    _created,
    _id,
    _one_of,
    _tenant,
    _updated,
    utcnow,
)


class QueueEntry(Base):
    """A user waiting for a pool: demand the provisioner can see."""

    __tablename__ = "queue_entries"
    __table_args__ = (UniqueConstraint("pool_id", "user_id"),)
    # The place in the queue: a user waits behind every entry of the pool with a lower id
    # (positions are counted, so serving or leaving the queue touches no counter).
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = _tenant()
    pool_id: Mapped[str] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # How the desktop is to be handed over when this user's turn comes.
    assignment: Mapped[str] = mapped_column(String(20), default="persistent")
    ordering: Mapped[str] = mapped_column(String(40), default="running_first")
    created_at: Mapped[datetime] = _created()
    # The policy entry's ``skip_lost_agents`` when the user queued: their turn hands them
    # only a desktop whose agent is alive, as a direct claim would.
    skip_lost_agents: Mapped[bool] = mapped_column(Boolean, default=False)


class SessionRow(Base):
    __tablename__ = "sessions"
    __table_args__ = (_one_of("state", SessionState),)
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    desktop_id: Mapped[str] = mapped_column(
        ForeignKey("desktops.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None, index=True
    )
    state: Mapped[str] = mapped_column(String(20), default="logged_in")
    # The account and session id as the desktop's agent reports them (the account may
    # be local to the desktop, so ``user_id`` is only set when it maps to a broker user).
    username: Mapped[str] = mapped_column(String(200), default="")
    session_key: Mapped[str] = mapped_column(String(200), default="")
    protocol: Mapped[str] = mapped_column(String(20), default="")
    client_address: Mapped[str] = mapped_column(String(64), default="")
    started_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    ended_at: Mapped[datetime | None] = mapped_column(default=None)


class AgentAction(Base):
    """Something the broker asks a desktop's agent to do (log off, lock, message): the
    agent pulls it with a heartbeat and answers with the outcome in the next one."""

    __tablename__ = "agent_actions"
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    desktop_id: Mapped[str] = mapped_column(
        ForeignKey("desktops.id", ondelete="CASCADE"), index=True
    )
    session_id: Mapped[str | None] = mapped_column(String(32), default=None)
    session_key: Mapped[str] = mapped_column(String(200), default="")
    kind: Mapped[str] = mapped_column(String(20))
    message: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = _created()
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    done_at: Mapped[datetime | None] = mapped_column(default=None)
    ok: Mapped[bool | None] = mapped_column(Boolean, default=None)
    detail: Mapped[str] = mapped_column(Text, default="")


class Event(Base):
    """The append-only event log: logins, assignments, connections, admin changes."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_tenant_at", "tenant_id", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str | None] = mapped_column(String(32), default=None)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    # Not indexed: a listing by kind always has a tenant (its index) or an id range.
    kind: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(200), default="")
    user_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    desktop_id: Mapped[str | None] = mapped_column(String(32), default=None)
    pool_id: Mapped[str | None] = mapped_column(String(32), default=None)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class EnrolmentKey(Base):
    """A tenant's key for the agents of machines the broker did not build: an agent that
    presents it is matched to its desktop row (instance id, address) or waits for an
    administrator. Only the key's SHA-256 is kept; the key is shown once, when minted."""

    __tablename__ = "enrolment_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    name: Mapped[str] = mapped_column(String(100))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The key's first characters, so an administrator can tell which key a machine holds.
    prefix: Mapped[str] = mapped_column(String(16), default="")
    created_by: Mapped[str] = mapped_column(String(200), default="")
    # The minter's role: the key stands for them when a machine presents it (it never
    # enrols at once the agent of a desktop they could not mint the token of). None, a
    # key older than this column: a tenant administrator's.
    minted_by_role: Mapped[str | None] = mapped_column(String(100), default=None)
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class PendingEnrolment(Base):
    """An agent that enrolled with an enrolment key and matched no desktop: it polls
    with a handle (kept hashed) until an administrator approves it for a desktop or
    denies it (``domain.states.ENROLMENT_TRANSITIONS``)."""

    __tablename__ = "pending_enrolments"
    __table_args__ = (_one_of("state", EnrolmentState),)
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    key_id: Mapped[str] = mapped_column(
        ForeignKey("enrolment_keys.id", ondelete="CASCADE"), index=True
    )
    poll_hash: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(20), default="pending")
    # What the agent said of its machine (instance, hostname, addresses, public_ip).
    identity: Mapped[dict[str, Any]] = mapped_column(default=dict)
    desktop_id: Mapped[str | None] = mapped_column(
        ForeignKey("desktops.id", ondelete="CASCADE"), default=None, index=True
    )
    reason: Mapped[str] = mapped_column(Text, default="")
    decided_by: Mapped[str] = mapped_column(String(200), default="")
    # The approver's role (migration 0011): the stronger-account rule is checked again in
    # it when the agent collects the credential. None reads as a tenant administrator's.
    decided_by_role: Mapped[str | None] = mapped_column(String(100), default=None)
    created_at: Mapped[datetime] = _created()
    decided_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime] = mapped_column()

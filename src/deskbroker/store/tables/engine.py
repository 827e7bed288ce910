"""The engine's work: periodic jobs, plan timers, provisioning tasks and broker nodes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from deskbroker.domain.states import (
    ProvisioningState,
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


class Job(Base):
    """A periodic job (a center scan, pool provisioning, retention...) claimed by lease."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("kind", "target_id"),)
    id: Mapped[str] = _id()
    kind: Mapped[str] = mapped_column(String(40))
    target_id: Mapped[str] = mapped_column(String(32), default="")
    interval_s: Mapped[float] = mapped_column(Float, default=60.0)
    next_run_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    lease_owner: Mapped[str | None] = mapped_column(String(100), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_run_at: Mapped[datetime | None] = mapped_column(default=None)
    last_ok_at: Mapped[datetime | None] = mapped_column(default=None)
    runs: Mapped[int] = mapped_column(BigInteger, default=0)


class Timer(Base):
    """A plan action due at a time: suspend after disconnect, release after logout..."""

    __tablename__ = "timers"
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    desktop_id: Mapped[str] = mapped_column(
        ForeignKey("desktops.id", ondelete="CASCADE"), index=True
    )
    session_id: Mapped[str | None] = mapped_column(String(32), default=None)
    plan: Mapped[str] = mapped_column(String(20))
    trigger: Mapped[str] = mapped_column(String(20))
    action: Mapped[str] = mapped_column(String(20))
    due_at: Mapped[datetime] = mapped_column(index=True)
    lease_owner: Mapped[str | None] = mapped_column(String(100), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = _created()
    # Set when this timer's terminate took the desktop out of the claim (it was
    # available): whoever holds the timer next, after a node died mid-terminate, knows
    # the desktop is out by the engine's doing, not an administrator's, and puts it back
    # if the terminate does not happen. Cleared when an administrator sets availability.
    took_out_at: Mapped[datetime | None] = mapped_column(default=None)


class ProvisioningTask(Base):
    """One desktop being built: a state machine persisted after every step."""

    __tablename__ = "provisioning_tasks"
    __table_args__ = (_one_of("state", ProvisioningState),)
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    pool_id: Mapped[str | None] = mapped_column(
        ForeignKey("pools.id", ondelete="SET NULL"), default=None, index=True
    )
    center_id: Mapped[str] = mapped_column(ForeignKey("centers.id", ondelete="CASCADE"), index=True)
    desktop_id: Mapped[str | None] = mapped_column(
        ForeignKey("desktops.id", ondelete="SET NULL"), default=None
    )
    name: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(20), default="requested", index=True)
    external_id: Mapped[str | None] = mapped_column(String(200), default=None)
    request: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    next_step_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    step_started_at: Mapped[datetime | None] = mapped_column(default=None)
    lease_owner: Mapped[str | None] = mapped_column(String(100), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class BrokerNode(Base):
    """One running broker node of the cluster (one ``deskbroker serve``, whatever its
    number of HTTP workers), as its heartbeat thread keeps it.

    ``id`` is the node's lease owner (``<broker_id>:<random>``): the leases it holds on
    jobs, timers and provisioning tasks name it, so the node that reaps it (no heartbeat
    for ``node_dead_after_s``) frees exactly those, and its work is taken over at once
    instead of when the leases run out.
    """

    __tablename__ = "broker_nodes"
    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    broker_id: Mapped[str] = mapped_column(String(100))
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    http_workers: Mapped[int] = mapped_column(Integer, default=1)
    version: Mapped[str] = mapped_column(String(40), default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

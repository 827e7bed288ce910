"""What the broker hands out: centers, their images and desktops, pools and their
members, the claim's order and partial indexes, pool samples and user volumes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    case,
    literal_column,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from deskbroker.domain.offers import OfferOrdering
from deskbroker.domain.states import (
    CLAIMABLE_POWER,
    AgentState,
    Availability,
    PowerState,
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


class Center(Base):
    __tablename__ = "centers"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(40))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    secrets_sealed: Mapped[str | None] = mapped_column(Text, default=None)
    scan_interval_s: Mapped[int] = mapped_column(Integer, default=60)
    status: Mapped[str] = mapped_column(String(20), default="unknown")
    status_message: Mapped[str] = mapped_column(Text, default="")
    last_scan_at: Mapped[datetime | None] = mapped_column(default=None)
    # Incremental scans ask the center for changes since this cursor (opaque per driver).
    scan_cursor: Mapped[str | None] = mapped_column(String(64), default=None)
    full_scan_interval_s: Mapped[int] = mapped_column(Integer, default=3600)
    last_full_scan_at: Mapped[datetime | None] = mapped_column(default=None)
    # External ids a short full scan did not see and kept: the next full scan removes
    # only those it misses too (two looks that agree), never what one look alone missed.
    held_unseen: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    # CIDRs of client networks that reach this center's desktops themselves: a native
    # viewer there connects directly, any other through the gateway (with the broker's
    # own DESKBROKER_GATEWAY_DIRECT_NETWORKS).
    direct_networks: Mapped[list[Any]] = mapped_column(default=list)
    # Drained: no login is given a desktop of this center (sessions go on); migration 0002.
    drained_at: Mapped[datetime | None] = mapped_column(default=None)
    # Whether a global administrator (in person) vouches for the machines it lists: set on
    # their create (unless they say otherwise) or by their explicit word, cleared by
    # anyone else's change. None (a center from before migration 0009) reads as not. A
    # pool offered to a global administrator takes by its filters alone only the desktops
    # of such centers: whoever controls a center's cloud names its machines.
    vouched_by_global_admin: Mapped[bool | None] = mapped_column(Boolean, default=None)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("center_id", "external_id"),)
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    center_id: Mapped[str] = mapped_column(ForeignKey("centers.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    os: Mapped[str] = mapped_column(String(100), default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class Pool(Base):
    __tablename__ = "pools"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    center_ids: Mapped[list[Any]] = mapped_column(default=list)
    filters: Mapped[list[Any]] = mapped_column(default=list)
    desktop_ids: Mapped[list[Any]] = mapped_column(default=list)
    parent_pool_id: Mapped[str | None] = mapped_column(
        ForeignKey("pools.id", ondelete="RESTRICT"), default=None
    )
    provisioning: Mapped[dict[str, Any]] = mapped_column(default=dict)
    release_interval_s: Mapped[float | None] = mapped_column(Float, default=None)
    sequence_next: Mapped[int | None] = mapped_column(BigInteger, default=None)
    status: Mapped[str] = mapped_column(String(20), default="ok")
    status_message: Mapped[str] = mapped_column(Text, default="")
    last_error: Mapped[str] = mapped_column(Text, default="")
    # Builds that failed in a row: the pool builds no more until ``builds_resume_at``
    # (exponentially later, capped), and ``last_error`` keeps the streak's first cause.
    build_failures: Mapped[int] = mapped_column(Integer, default=0)
    builds_resume_at: Mapped[datetime | None] = mapped_column(default=None)
    last_release_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    # Drained: no login is given a desktop from this pool (sessions go on); migration 0002.
    drained_at: Mapped[datetime | None] = mapped_column(default=None)


class Desktop(Base):
    __tablename__ = "desktops"
    __table_args__ = (
        UniqueConstraint("center_id", "external_id"),
        Index("ix_desktops_assigned_user", "assigned_user_id"),
        _one_of("power_state", PowerState),
        _one_of("availability", Availability),
        _one_of("agent_state", AgentState),
    )
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    center_id: Mapped[str] = mapped_column(ForeignKey("centers.id", ondelete="RESTRICT"))
    external_id: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    address: Mapped[str] = mapped_column(String(255), default="")
    hostname: Mapped[str] = mapped_column(String(255), default="")
    os: Mapped[str] = mapped_column(String(100), default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    power_state: Mapped[str] = mapped_column(String(20), default="unknown")
    availability: Mapped[str] = mapped_column(String(20), default="available")
    agent_state: Mapped[str] = mapped_column(String(20), default="unknown")
    reachable: Mapped[bool | None] = mapped_column(Boolean, default=None)
    deletable: Mapped[bool] = mapped_column(Boolean, default=False)
    driver_state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    assigned_user_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    assigned_pool_id: Mapped[str | None] = mapped_column(
        ForeignKey("pools.id", ondelete="SET NULL"), default=None
    )
    assignment_kind: Mapped[str | None] = mapped_column(String(20), default=None)
    # Which of the user's desktops from ``assigned_pool_id`` this is (0 = the first), set
    # by a login's claim only: unique per user and pool (uq_desktops_user_pool_slot), so
    # two logins of one user at the same moment cannot both take "their first desktop".
    assignment_slot: Mapped[int | None] = mapped_column(Integer, default=None)
    assigned_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    # Set when a connect asked the center to start or resume the desktop; cleared once
    # it is seen running. Keeps a retrying client from sending a start per request.
    starting_since: Mapped[datetime | None] = mapped_column(default=None)
    # When a connect last handed this desktop out. Until its agent reports the session,
    # the grant holds a unit of the tenant's session quota (for ``session_grant_s``).
    connect_granted_at: Mapped[datetime | None] = mapped_column(default=None)
    # The id of the one agent token this desktop accepts; minting a new one revokes it.
    agent_token_id: Mapped[str | None] = mapped_column(String(32), default=None)
    # How many sessions at once the desktop's kind allows: 1 for a single-user desktop,
    # more for a multi-session host. An agent cannot report more open sessions than this.
    max_sessions: Mapped[int] = mapped_column(Integer, default=1)
    # When the desktop's agent enrolled: an engine-built desktop's enrolment secret is
    # single-use, and this is what makes a second use fail.
    agent_enrolled_at: Mapped[datetime | None] = mapped_column(default=None)
    # SHA-256 of the refresh secret the agent got at enrolment; it buys a new agent token
    # after the old one expired or was revoked when the desktop changed hands.
    agent_refresh_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    # The agent's last heartbeat or event; an agent silent for long is ``lost``.
    agent_seen_at: Mapped[datetime | None] = mapped_column(default=None)
    # The highest event sequence number taken from the agent: a replayed or late event
    # (a number not above it) is ignored, so a queue replay counts every event once.
    agent_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    # The desktop's SSH host keys (OpenSSH public key lines), given by an administrator or
    # learned on the gateway's first SSH login: the gateway's SSH client accepts only these.
    # Scans never write it (a center's listing cannot vouch for a key).
    ssh_host_keys: Mapped[list[Any]] = mapped_column(default=list)
    # Drained: no login is given this desktop (its holder keeps it); migration 0002.
    drained_at: Mapped[datetime | None] = mapped_column(default=None)
    # An administrator deleted this broker-built desktop: it stays ``deleting`` (whatever
    # a scan sees meanwhile) until the engine's removal job saw its instance gone.
    delete_requested_at: Mapped[datetime | None] = mapped_column(default=None)


# --- the claim's order ----------------------------------------------------------------
# Constants are spelled as SQL literals, not bound parameters: a partial index serves a
# query only where the query's WHERE visibly implies the index's, and an index expression
# serves an ORDER BY term only where both carry the same constants (PostgreSQL's generic
# plans of prepared statements and SQLite's planner see no parameter values).
def _const(value: str | int) -> ColumnElement[Any]:
    return literal_column(f"'{value}'" if isinstance(value, str) else str(value))


#: ``domain.states.is_free`` in SQL: the predicate of the claim's partial indexes.
FREE_DESKTOP: ColumnElement[bool] = and_(
    Desktop.assigned_user_id.is_(None),
    Desktop.availability == _const(Availability.AVAILABLE.value),
    Desktop.power_state.in_([_const(s.value) for s in CLAIMABLE_POWER]),
)


_RUNNING = case(
    (Desktop.power_state == _const(PowerState.RUNNING.value), _const(0)), else_=_const(1)
)


_NEVER_USED = case((Desktop.last_used_at.is_(None), _const(0)), else_=_const(1))


#: Each pool ordering's rank, best first: the claim's ORDER BY and, after the tenant, the
#: columns of its partial index ``ix_desktops_free_<ordering>``, so that the claim walks
#: the index and stops at the first free desktop of the pool, whatever the pool's size.
CLAIM_ORDER: dict[OfferOrdering, tuple[Any, ...]] = {
    OfferOrdering.RUNNING_FIRST: (_RUNNING, _NEVER_USED, Desktop.last_used_at, Desktop.name),
    OfferOrdering.LEAST_RECENTLY_USED: (_NEVER_USED, Desktop.last_used_at, Desktop.name),
    OfferOrdering.MOST_RECENTLY_USED: (
        _NEVER_USED.desc(),
        Desktop.last_used_at.desc(),
        Desktop.name,
    ),
    OfferOrdering.NAME: (Desktop.name,),
}


for _ordering, _rank in CLAIM_ORDER.items():
    Index(
        f"ix_desktops_free_{_ordering.value}",
        Desktop.tenant_id,
        *_rank,
        postgresql_where=FREE_DESKTOP,
        sqlite_where=FREE_DESKTOP,
    )


Index(
    "uq_desktops_user_pool_slot",
    Desktop.assigned_user_id,
    Desktop.assigned_pool_id,
    Desktop.assignment_slot,
    unique=True,
    postgresql_where=Desktop.assignment_slot.is_not(None),
    sqlite_where=Desktop.assignment_slot.is_not(None),
)


class PoolMember(Base):
    """Materialised pool membership so a claim is one indexed statement."""

    __tablename__ = "pool_members"
    pool_id: Mapped[str] = mapped_column(
        ForeignKey("pools.id", ondelete="CASCADE"), primary_key=True
    )
    desktop_id: Mapped[str] = mapped_column(
        ForeignKey("desktops.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class PoolStat(Base):
    """A sample of a pool's counts, for history graphs and capacity planning."""

    __tablename__ = "pool_stats"
    __table_args__ = (Index("ix_pool_stats_pool_at", "pool_id", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pool_id: Mapped[str] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)


class UserVolume(Base):
    """A user's data disk on one center: it follows them from desktop to desktop."""

    __tablename__ = "user_volumes"
    __table_args__ = (UniqueConstraint("user_id", "center_id"),)
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    center_id: Mapped[str] = mapped_column(ForeignKey("centers.id", ondelete="CASCADE"))
    volume_id: Mapped[str] = mapped_column(String(200))
    size_gb: Mapped[int] = mapped_column(Integer)
    # The desktop it is attached to now (by desktop id and the instance it had then).
    desktop_id: Mapped[str | None] = mapped_column(String(32), default=None)
    attached_to: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

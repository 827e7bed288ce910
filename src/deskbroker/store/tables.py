"""The broker's tables. Every tenant-owned row carries ``tenant_id``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from deskbroker.domain.states import (
    AgentState,
    Availability,
    PowerState,
    ProvisioningState,
    SessionState,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _one_of(column: str, states: type[StrEnum]) -> CheckConstraint:
    """The database refuses a state its machine does not have (``ck_<table>_<column>``)."""
    allowed = ", ".join(f"'{s.value}'" for s in states)
    return CheckConstraint(f"{column} IN ({allowed})", name=column)


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A moment in UTC on both databases: SQLite keeps no time zone, so what it stores is
    made UTC on the way in and read back as UTC, never as a naive time."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: UtcDateTime(),
    }


def _id() -> Mapped[str]:
    return mapped_column(String(32), primary_key=True, default=new_id)


def _tenant() -> Mapped[str]:
    return mapped_column(ForeignKey("tenants.id", ondelete="RESTRICT"), index=True)


def _created() -> Mapped[datetime]:
    return mapped_column(default=utcnow)


def _updated() -> Mapped[datetime]:
    return mapped_column(default=utcnow, onupdate=utcnow)


class BrokerState(Base):
    """One row: the configuration version that invalidates every node's cache."""

    __tablename__ = "broker_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    config_version: Mapped[int] = mapped_column(BigInteger, default=1)


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    quota_desktops: Mapped[int | None] = mapped_column(Integer, default=None)
    quota_sessions: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


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
    # Queue tickets: tail is handed to the next waiting user, head counts those served.
    queue_tail: Mapped[int] = mapped_column(BigInteger, default=0)
    queue_head: Mapped[int] = mapped_column(BigInteger, default=0)
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
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class PoolMember(Base):
    """Materialised pool membership so a claim is one indexed statement."""

    __tablename__ = "pool_members"
    pool_id: Mapped[str] = mapped_column(
        ForeignKey("pools.id", ondelete="CASCADE"), primary_key=True
    )
    desktop_id: Mapped[str] = mapped_column(
        ForeignKey("desktops.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class ProtocolPlan(Base):
    __tablename__ = "protocol_plans"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    name: Mapped[str] = mapped_column(String(100))
    protocols: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class PowerPlan(Base):
    __tablename__ = "power_plans"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    name: Mapped[str] = mapped_column(String(100))
    rules: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class ReleasePlan(Base):
    __tablename__ = "release_plans"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    name: Mapped[str] = mapped_column(String(100))
    rules: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class Policy(Base):
    __tablename__ = "policies"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    max_desktops_per_user: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class PolicyEntry(Base):
    """One pool a policy offers, in order, with how and how many."""

    __tablename__ = "policy_entries"
    __table_args__ = (UniqueConstraint("policy_id", "pool_id"),)
    id: Mapped[str] = _id()
    policy_id: Mapped[str] = mapped_column(
        ForeignKey("policies.id", ondelete="CASCADE"), index=True
    )
    pool_id: Mapped[str] = mapped_column(ForeignKey("pools.id", ondelete="RESTRICT"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    desktops: Mapped[int] = mapped_column(Integer, default=1)
    assignment: Mapped[str] = mapped_column(String(20), default="persistent")
    ordering: Mapped[str] = mapped_column(String(40), default="running_first")
    backup_pool_id: Mapped[str | None] = mapped_column(
        ForeignKey("pools.id", ondelete="RESTRICT"), default=None, index=True
    )
    protocol_plan_id: Mapped[str | None] = mapped_column(
        ForeignKey("protocol_plans.id", ondelete="RESTRICT"), default=None
    )
    power_plan_id: Mapped[str | None] = mapped_column(
        ForeignKey("power_plans.id", ondelete="RESTRICT"), default=None
    )
    release_plan_id: Mapped[str | None] = mapped_column(
        ForeignKey("release_plans.id", ondelete="RESTRICT"), default=None
    )


class IdentitySource(Base):
    __tablename__ = "identity_sources"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(40))
    domain: Mapped[str] = mapped_column(String(200), default="")
    position: Mapped[int] = mapped_column(Integer, default=0)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    secrets_sealed: Mapped[str | None] = mapped_column(Text, default=None)
    # off | optional (users who enrolled give a code) | required (everyone does).
    second_factor: Mapped[str] = mapped_column(String(20), default="off")
    # Last created or changed by a global administrator (or the operator's CLI): only
    # such a source is sent unknown names in a tenant that holds a global administrator
    # (services/source_choice.py), since a global admin's typo is one.
    set_by_global_admin: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class AssignmentRuleRow(Base):
    __tablename__ = "assignment_rules"
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    identity_source_id: Mapped[str] = mapped_column(
        ForeignKey("identity_sources.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer, default=0)
    name: Mapped[str] = mapped_column(String(100), default="")
    conditions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    policy_id: Mapped[str | None] = mapped_column(
        ForeignKey("policies.id", ondelete="RESTRICT"), default=None, index=True
    )
    role: Mapped[str] = mapped_column(String(40), default="user")
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("identity_source_id", "username"),
        # One broker user per account at an OpenID provider (NULLs are distinct: users
        # of other kinds of source have none).
        UniqueConstraint(
            "identity_source_id", "oidc_issuer", "oidc_subject", name="uq_users_oidc_subject"
        ),
        # Which sources hold a name, whatever its case: the login sends a password only
        # to the source that owns the account (services/source_choice.py).
        Index("ix_users_tenant_folded_name", "tenant_id", func.lower(text("username"))),
    )
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    identity_source_id: Mapped[str] = mapped_column(
        ForeignKey("identity_sources.id", ondelete="RESTRICT"), index=True
    )
    username: Mapped[str] = mapped_column(String(200))
    # The OpenID provider's account (issuer + ``sub``) this user was bound to at their
    # first sign-in: later sign-ins are matched by it, never by a name or an e-mail.
    oidc_issuer: Mapped[str | None] = mapped_column(String(1000), default=None)
    oidc_subject: Mapped[str | None] = mapped_column(String(255), default=None)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(320), default="")
    password_hash: Mapped[str | None] = mapped_column(String(255), default=None)
    role: Mapped[str] = mapped_column(String(40), default="user")
    groups: Mapped[list[Any]] = mapped_column(default=list)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # The TOTP secret, sealed; it counts as a second factor only once ``totp_enrolled_at``
    # says the user proved their authenticator app has it.
    totp_sealed: Mapped[str | None] = mapped_column(Text, default=None)
    totp_enrolled_at: Mapped[datetime | None] = mapped_column(default=None)
    # The last time step whose code was accepted: no code of it or before it passes again.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # Named in every user token this user holds; raising it (logout, disabled, demoted,
    # new password) makes all of them stop working at the next request.
    token_generation: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class CustomRole(Base):
    """A tenant's own role: a named set of ``resource:action`` grants."""

    __tablename__ = "custom_roles"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    name: Mapped[str] = mapped_column(String(40))
    description: Mapped[str] = mapped_column(String(500), default="")
    permissions: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class ApiToken(Base):
    """A token for automation: acts as the user who made it, within ``scopes``, until
    ``expires_at`` or revocation. Only its id is stored; the signed token is shown once."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    expires_at: Mapped[datetime] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = _created()


class LoginThrottle(Base):
    """Failed sign-ins counted per account or per client address (``key``), and until
    when that key is locked out. Shared by every broker of a cluster."""

    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_started_at: Mapped[datetime] = mapped_column()
    locked_until: Mapped[datetime | None] = mapped_column(default=None)
    lockouts: Mapped[int] = mapped_column(Integer, default=0)


class LoginChallenge(Base):
    """A password login waiting for its second factor; consumed by its one success."""

    __tablename__ = "login_challenges"
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    # The user's OU as the directory said at the password step: rules match on it, and
    # the broker's user row does not keep it.
    ou: Mapped[str] = mapped_column(Text, default="")
    expires_at: Mapped[datetime] = mapped_column(index=True)
    created_at: Mapped[datetime] = _created()


class QueueEntry(Base):
    """A user waiting for a pool: demand the provisioner can see."""

    __tablename__ = "queue_entries"
    __table_args__ = (UniqueConstraint("pool_id", "user_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = _tenant()
    pool_id: Mapped[str] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    ticket: Mapped[int] = mapped_column(BigInteger)
    # How the desktop is to be handed over when this user's turn comes.
    assignment: Mapped[str] = mapped_column(String(20), default="persistent")
    ordering: Mapped[str] = mapped_column(String(40), default="running_first")
    created_at: Mapped[datetime] = _created()


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


class Event(Base):
    """The append-only event log: logins, assignments, connections, admin changes."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_tenant_at", "tenant_id", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str | None] = mapped_column(String(32), default=None)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(40), index=True)
    actor: Mapped[str] = mapped_column(String(200), default="")
    user_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    desktop_id: Mapped[str | None] = mapped_column(String(32), default=None)
    pool_id: Mapped[str | None] = mapped_column(String(32), default=None)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


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


class OidcFlow(Base):
    """An OpenID Connect sign-in under way: an authorization code flow between its start
    and the provider's callback, or a device flow the CLI polls. Kept in the database so
    any broker of a cluster can finish what another started.

    ``id`` is the SHA-256 of the ``state`` (or the CLI's device handle), so the table
    alone cannot finish anyone's sign-in; the PKCE verifier or device code is sealed.
    """

    __tablename__ = "oidc_flows"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))  # code | device | handoff
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    identity_source_id: Mapped[str] = mapped_column(
        ForeignKey("identity_sources.id", ondelete="CASCADE"), index=True
    )
    nonce: Mapped[str | None] = mapped_column(String(64), default=None)
    sealed: Mapped[str] = mapped_column(Text)
    redirect_uri: Mapped[str] = mapped_column(String(2000), default="")
    return_to: Mapped[str | None] = mapped_column(String(2000), default=None)
    # SHA-256 of the browser's binding cookie: the callback must come back to the
    # browser that started the sign-in (login CSRF).
    browser_binding: Mapped[str | None] = mapped_column(String(64), default=None)
    interval_s: Mapped[int] = mapped_column(Integer, default=5)
    next_poll_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None] = mapped_column(default=None)

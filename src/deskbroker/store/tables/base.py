"""The declarative base, the naming convention and the column helpers every table uses,
and the broker-wide rows (the configuration version, tenants)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

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


class ConfigChange(Base):
    """Which tenant's configuration each version changed (``None``: possibly every
    tenant's), so a node's cache reloads that tenant's rows, not every tenant's. No
    foreign key: a deleted tenant's change is what tells the caches to drop it."""

    __tablename__ = "config_changes"
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    tenant_id: Mapped[str | None] = mapped_column(String(32), default=None)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    quota_desktops: Mapped[int | None] = mapped_column(Integer, default=None)
    quota_sessions: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class TenantGuard(Base):
    """A tenant's pool-guard version: raised by every change of who a pool is offered to
    or what it may take (rules, policies, users, vouches, pools), so a membership refresh
    that read the guard before such a change committed on another broker sees it move
    and looks again (``store.membership.guard_changed``). A row of its own, not a column
    of ``tenants``: the quota checks lock the tenant row first, and an administrator's
    write that locked its pool first would otherwise deadlock with them."""

    __tablename__ = "tenant_guards"
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, default=0)

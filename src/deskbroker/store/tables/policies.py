"""Policies and the plans (protocol, power, release) their entries point to."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from deskbroker.store.tables.base import (
    Base,
    _created,
    _id,
    _tenant,
    _updated,
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
    # The claim passes over desktops whose agent is ``lost`` (missed its heartbeats):
    # a machine that may be hung is not handed to a user.
    skip_lost_agents: Mapped[bool] = mapped_column(Boolean, default=False)
    # What a login the broker did not hand out, on a desktop of this pool, leads to
    # (record, assign, flag); None: the broker's DESKBROKER_ROGUE_USERS.
    rogue_users: Mapped[str | None] = mapped_column(String(20), default=None)
    # Which of start/stop/reboot the user holding a desktop of this pool may ask for
    # (the portal's power buttons); empty: none.
    user_power_actions: Mapped[list[Any]] = mapped_column(default=list)

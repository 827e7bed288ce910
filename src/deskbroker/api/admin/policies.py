"""Admin resources for policies and the protocol, power and release plans."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field, model_validator
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from deskbroker.api.admin.crud import ResourceSpec, add_routes, must_exist
from deskbroker.api.schemas import (
    Body,
    Id,
    Name,
    PowerRule,
    ProtocolEntry,
    ReleaseRule,
    Stamped,
    Text,
)
from deskbroker.domain.offers import AssignmentKind, OfferOrdering
from deskbroker.errors import Conflict, InvalidInput
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import (
    AssignmentRuleRow,
    Policy,
    PolicyEntry,
    Pool,
    PowerPlan,
    ProtocolPlan,
    ReleasePlan,
)


# --- plans ---------------------------------------------------------------------------
class ProtocolPlanIn(Body):
    name: Name
    protocols: list[ProtocolEntry] = Field(min_length=1, max_length=10)
    tenant_id: Id | None = None

    @model_validator(mode="after")
    def _unique(self) -> ProtocolPlanIn:
        names = [p.protocol for p in self.protocols]
        if len(names) != len(set(names)):
            raise ValueError("each protocol may appear once in a plan")
        return self


class ProtocolPlanPatch(Body):
    name: Name | None = None
    protocols: list[ProtocolEntry] | None = Field(default=None, min_length=1, max_length=10)


class ProtocolPlanOut(Stamped):
    name: str
    protocols: list[dict[str, Any]]


class PowerPlanIn(Body):
    name: Name
    rules: list[PowerRule] = Field(default_factory=list, max_length=10)
    tenant_id: Id | None = None


class PowerPlanPatch(Body):
    name: Name | None = None
    rules: list[PowerRule] | None = Field(default=None, max_length=10)


class PowerPlanOut(Stamped):
    name: str
    rules: list[dict[str, Any]]


class ReleasePlanIn(Body):
    name: Name
    rules: list[ReleaseRule] = Field(default_factory=list, max_length=10)
    tenant_id: Id | None = None


class ReleasePlanPatch(Body):
    name: Name | None = None
    rules: list[ReleaseRule] | None = Field(default=None, max_length=10)


class ReleasePlanOut(Stamped):
    name: str
    rules: list[dict[str, Any]]


def _plan_in_use(column: Any, label: str) -> Any:
    def check(session: Session, plan: Any) -> None:
        used = session.scalars(
            select(Policy.name)
            .join(PolicyEntry, PolicyEntry.policy_id == Policy.id)
            .where(column == plan.id)
        ).first()
        if used is not None:
            raise Conflict(f"{label} {plan.name} is used by policy {used}; change the policy first")

    return check


# --- policies ------------------------------------------------------------------------
class EntryIn(Body):
    pool_id: Id
    desktops: int = Field(default=1, ge=1, le=100)
    assignment: AssignmentKind = AssignmentKind.PERSISTENT
    ordering: OfferOrdering = OfferOrdering.RUNNING_FIRST
    backup_pool_id: Id | None = None
    protocol_plan_id: Id | None = None
    power_plan_id: Id | None = None
    release_plan_id: Id | None = None


class PolicyIn(Body):
    name: Name
    description: Text = ""
    max_desktops_per_user: int = Field(default=1, ge=0, le=100)
    entries: list[EntryIn] = Field(default_factory=list, max_length=50)
    tenant_id: Id | None = None

    @model_validator(mode="after")
    def _unique_pools(self) -> PolicyIn:
        pools = [e.pool_id for e in self.entries]
        if len(pools) != len(set(pools)):
            raise ValueError("a pool may appear once in a policy")
        return self


class PolicyPatch(Body):
    name: Name | None = None
    description: Text | None = None
    max_desktops_per_user: int | None = Field(default=None, ge=0, le=100)
    entries: list[EntryIn] | None = Field(default=None, max_length=50)


class PolicyOut(Stamped):
    name: str
    description: str
    max_desktops_per_user: int
    entries: list[dict[str, Any]]


_ENTRY_REFS = (
    ("pool_id", Pool, "pool"),
    ("backup_pool_id", Pool, "backup pool"),
    ("protocol_plan_id", ProtocolPlan, "protocol plan"),
    ("power_plan_id", PowerPlan, "power plan"),
    ("release_plan_id", ReleasePlan, "release plan"),
)


def _prepare_policy(
    session: Session, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
) -> dict[str, Any]:
    entries = data.pop("entries", None)
    if entries is not None:
        pools = [e["pool_id"] for e in entries]
        if len(pools) != len(set(pools)):
            raise InvalidInput("a pool may appear once in a policy")
        for entry in entries:
            for key, model, label in _ENTRY_REFS:
                must_exist(session, model, entry.get(key), tenant, label)
        # Written by the after-write hook, once the policy has its id.
        session.info["policy_entries"] = entries
    return data


def _write_entries(session: Session, ctx: BrokerContext, policy: Any) -> None:
    entries = session.info.pop("policy_entries", None)
    if entries is None:
        return
    session.execute(delete(PolicyEntry).where(PolicyEntry.policy_id == policy.id))
    for position, entry in enumerate(entries):
        session.add(
            PolicyEntry(
                policy_id=policy.id,
                position=position,
                **{k: (v.value if hasattr(v, "value") else v) for k, v in entry.items()},
            )
        )
    session.flush()


def _policy_out(session: Session, policy: Any) -> dict[str, Any]:
    out = {c.key: getattr(policy, c.key) for c in Policy.__table__.columns}
    rows = session.scalars(
        select(PolicyEntry).where(PolicyEntry.policy_id == policy.id).order_by(PolicyEntry.position)
    ).all()
    out["entries"] = [
        {
            k: getattr(r, k)
            for k in (
                "pool_id",
                "desktops",
                "assignment",
                "ordering",
                "backup_pool_id",
                "protocol_plan_id",
                "power_plan_id",
                "release_plan_id",
            )
        }
        for r in rows
    ]
    return out


def _policy_in_use(session: Session, policy: Any) -> None:
    rule = session.scalars(
        select(AssignmentRuleRow.name).where(AssignmentRuleRow.policy_id == policy.id)
    ).first()
    if rule is not None:
        raise Conflict(f"policy {policy.name} is used by the assignment rule {rule or '(unnamed)'}")


SPECS: list[ResourceSpec[Any]] = [
    ResourceSpec(
        path="protocol-plans",
        label="protocol plan",
        model=ProtocolPlan,
        read=ProtocolPlanOut,
        create=ProtocolPlanIn,
        update=ProtocolPlanPatch,
        filters={"name": str},
        before_delete=_plan_in_use(PolicyEntry.protocol_plan_id, "protocol plan"),
        reaches_users=True,
    ),
    ResourceSpec(
        path="power-plans",
        label="power plan",
        model=PowerPlan,
        read=PowerPlanOut,
        create=PowerPlanIn,
        update=PowerPlanPatch,
        filters={"name": str},
        before_delete=_plan_in_use(PolicyEntry.power_plan_id, "power plan"),
        reaches_users=True,
    ),
    ResourceSpec(
        path="release-plans",
        label="release plan",
        model=ReleasePlan,
        read=ReleasePlanOut,
        create=ReleasePlanIn,
        update=ReleasePlanPatch,
        filters={"name": str},
        before_delete=_plan_in_use(PolicyEntry.release_plan_id, "release plan"),
        reaches_users=True,
    ),
    ResourceSpec(
        path="policies",
        label="policy",
        model=Policy,
        read=PolicyOut,
        create=PolicyIn,
        update=PolicyPatch,
        filters={"name": str},
        prepare=_prepare_policy,
        after_write=_write_entries,
        to_read=_policy_out,
        before_delete=_policy_in_use,
        reaches_users=True,
    ),
]


def router() -> APIRouter:
    r = APIRouter()
    for spec in SPECS:
        add_routes(r, spec)
    return r

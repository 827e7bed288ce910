"""Admin resources for policies and the protocol, power and release plans."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import Field, field_validator, model_validator

from deskbroker.api.admin.crud import ResourceSpec, add_routes
from deskbroker.api.schemas import Body, Id, Name, ProtocolEntry, Stamped, Text
from deskbroker.domain.offers import AssignmentKind, OfferOrdering
from deskbroker.domain.plans import PowerRule, ReleaseRule, RogueUsers
from deskbroker.services import policy_catalog


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
    skip_lost_agents: bool = Field(
        default=False,
        description="the claim passes over desktops whose agent is lost (missed heartbeats)",
    )
    rogue_users: RogueUsers | None = Field(
        default=None,
        description="a login the broker did not hand out on a desktop of this pool: record, "
        "assign (the free desktop becomes the user's) or flag (it leaves every offer); "
        "none: DESKBROKER_ROGUE_USERS. Where several policies offer the pool the strictest "
        "wins (flag, record, assign)",
    )
    user_power_actions: list[Literal["start", "stop", "reboot"]] = Field(
        default_factory=list,
        max_length=3,
        description="what the user holding a desktop of this pool may do to its power "
        "(POST /api/v1/client/desktops/{id}/power and the portal's buttons); empty: nothing",
    )

    @field_validator("user_power_actions")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        if len(value) != len(set(value)):
            raise ValueError("each power action may appear once")
        return value


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


SPECS: list[ResourceSpec[Any]] = [
    ResourceSpec(
        path="protocol-plans",
        resource=policy_catalog.PROTOCOL_PLANS,
        read=ProtocolPlanOut,
        create=ProtocolPlanIn,
        update=ProtocolPlanPatch,
        filters={"name": str},
    ),
    ResourceSpec(
        path="power-plans",
        resource=policy_catalog.POWER_PLANS,
        read=PowerPlanOut,
        create=PowerPlanIn,
        update=PowerPlanPatch,
        filters={"name": str},
    ),
    ResourceSpec(
        path="release-plans",
        resource=policy_catalog.RELEASE_PLANS,
        read=ReleasePlanOut,
        create=ReleasePlanIn,
        update=ReleasePlanPatch,
        filters={"name": str},
    ),
    ResourceSpec(
        path="policies",
        resource=policy_catalog.POLICIES,
        read=PolicyOut,
        create=PolicyIn,
        update=PolicyPatch,
        filters={"name": str},
    ),
]


def router() -> APIRouter:
    r = APIRouter()
    for spec in SPECS:
        add_routes(r, spec)
    return r

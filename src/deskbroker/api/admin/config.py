"""Configuration as code: a tenant's configuration as one document, exported, planned
and applied (``services/config_document.py`` and ``services/config_code.py`` do the
work; this module says what a document may hold, field by field, so a bad one is refused
naming the field)."""

from __future__ import annotations

import zoneinfo
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import Field, StringConstraints, field_validator, model_validator

from deskbroker.api.admin import access, identity, inventory, policies, pools, standing
from deskbroker.api.admin.access import Grants
from deskbroker.api.admin.identity import RoleName
from deskbroker.api.deps import AdminReader, AdminWriter, Ctx
from deskbroker.api.schemas import (
    Body,
    Name,
    Out,
    ProtocolEntry,
    Secrets,
    Text,
)
from deskbroker.domain.membership import FilterSpec
from deskbroker.domain.offers import AssignmentKind, OfferOrdering
from deskbroker.domain.placement import Placement
from deskbroker.domain.plans import PowerRule, ReleaseRule
from deskbroker.domain.provisioning import ProvisioningParameters, Window
from deskbroker.domain.rules import Conditions
from deskbroker.domain.second_factor import SecondFactorMode
from deskbroker.services import config_code, config_document
from deskbroker.services.catalog_crud import Catalog


class Kept(StrEnum):
    """Secrets the document does not hold: keep the ones the broker holds."""

    STORED = config_document.STORED


KeptSecrets = Kept | Secrets | None
SECRETS = (
    "never exported: 'stored' keeps the secrets the broker holds, a map sets new ones "
    "(the CLI fills ${env:NAME} from its environment), null removes them"
)


def _filled(secrets: Any) -> Any:
    """A ``${env:NAME}`` left in a secret is the CLI's to fill, never stored as one."""
    if isinstance(secrets, dict):
        for key, value in secrets.items():
            if value.startswith("${env:") and value.endswith("}"):
                raise ValueError(
                    f"secrets.{key}: {value} is filled from the environment by "
                    "`deskbroker config`; send the value itself"
                )
    return secrets


class RoleDoc(Body):
    name: Annotated[str, StringConstraints(min_length=2, max_length=40, strip_whitespace=True)]
    description: Annotated[str, StringConstraints(max_length=500)] = ""
    permissions: Grants


class CenterDoc(Body):
    name: Name
    kind: Name
    params: dict[str, Any] = Field(default_factory=dict)
    secrets: KeptSecrets = Field(default=None, description=SECRETS)
    scan_interval_s: int = Field(default=60, ge=5, le=86400)

    _secrets = field_validator("secrets")(_filled)


class ProtocolPlanDoc(Body):
    name: Name
    protocols: list[ProtocolEntry] = Field(min_length=1, max_length=10)

    @model_validator(mode="after")
    def _unique(self) -> ProtocolPlanDoc:
        names = [p.protocol for p in self.protocols]
        if len(names) != len(set(names)):
            raise ValueError("each protocol may appear once in a plan")
        return self


class PowerPlanDoc(Body):
    name: Name
    rules: list[PowerRule] = Field(default_factory=list, max_length=10)


class ReleasePlanDoc(Body):
    name: Name
    rules: list[ReleaseRule] = Field(default_factory=list, max_length=10)


class DesktopRef(Body):
    center: Name
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class ProvisioningDoc(Body):
    """A pool's provisioning (``pools.Provisioning``) with its center by name."""

    enabled: bool = False
    center: Name | None = Field(
        default=None, description="the center to build on, by name; default the pool's first"
    )
    centers: list[Name] = Field(
        default_factory=list,
        max_length=20,
        description="the centers to build in, in order, by name (a pool spanning centers)",
    )
    placement: Placement = Placement.FILL_IN_ORDER
    center_parameters: dict[Name, dict[str, Any]] = Field(
        default_factory=dict,
        max_length=20,
        description="per center of `centers`, by name: its own provisioning parameters",
    )
    timezone: Annotated[str, StringConstraints(max_length=64)] = Field(
        default="UTC", description="IANA time zone of the schedule windows"
    )
    min_unassigned: int = Field(default=0, ge=0, le=100000)
    max_total: int = Field(default=0, ge=0, le=100000)
    schedules: list[Window] = Field(default_factory=list, max_length=50)
    parameters: ProvisioningParameters = Field(default_factory=ProvisioningParameters)

    @model_validator(mode="after")
    def _as_a_pool_says(self) -> ProvisioningDoc:
        # The pool routes' own checks (time zone, limits), on the same fields.
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {self.timezone!r}; use e.g. Europe/Paris") from exc
        if self.min_unassigned > self.max_total and self.enabled:
            raise ValueError("min_unassigned cannot be larger than max_total")
        for window in self.schedules:
            if window.min_unassigned > window.max_total:
                raise ValueError("a schedule's min_unassigned cannot be larger than its max_total")
        return self


class PoolDoc(Body):
    name: Name
    description: Text = ""
    centers: list[Name] = Field(default_factory=list, max_length=100)
    filters: list[FilterSpec] = Field(default_factory=list, max_length=50)
    desktops: list[DesktopRef] = Field(default_factory=list, max_length=10000)
    parent: Name | None = None
    provisioning: ProvisioningDoc = Field(default_factory=ProvisioningDoc)


class EntryDoc(Body):
    pool: Name
    desktops: int = Field(default=1, ge=1, le=100)
    assignment: AssignmentKind = AssignmentKind.PERSISTENT
    ordering: OfferOrdering = OfferOrdering.RUNNING_FIRST
    backup_pool: Name | None = None
    protocol_plan: Name | None = None
    power_plan: Name | None = None
    release_plan: Name | None = None
    skip_lost_agents: bool = False


class PolicyDoc(Body):
    name: Name
    description: Text = ""
    max_desktops_per_user: int = Field(default=1, ge=0, le=100)
    entries: list[EntryDoc] = Field(default_factory=list, max_length=50)

    @model_validator(mode="after")
    def _unique_pools(self) -> PolicyDoc:
        names = [e.pool for e in self.entries]
        if len(names) != len(set(names)):
            raise ValueError("a pool may appear once in a policy")
        return self


class RuleDoc(Body):
    name: Annotated[str, StringConstraints(max_length=100)] = ""
    position: int = Field(default=0, ge=0, le=10000)
    conditions: Conditions = Field(default_factory=Conditions)
    policy: Name | None = None
    role: RoleName = "user"


class SourceDoc(Body):
    name: Name
    kind: Name
    domain: Annotated[str, StringConstraints(max_length=200, to_lower=True)] = ""
    position: int = Field(default=0, ge=0, le=10000)
    enabled: bool = True
    params: dict[str, Any] = Field(default_factory=dict)
    secrets: KeptSecrets = Field(default=None, description=SECRETS)
    second_factor: SecondFactorMode = SecondFactorMode.OFF
    _secrets = field_validator("secrets")(_filled)
    rules: list[RuleDoc] | None = Field(
        default=None,
        max_length=500,
        description="the source's assignment rules in order; left out: kept as they are",
    )


SECTION = "left out or null: not managed; a list: every object of the kind, the rest deleted"


class ConfigDocument(Body):
    """A tenant's configuration. Objects refer to each other by name."""

    roles: list[RoleDoc] | None = Field(default=None, max_length=200, description=SECTION)
    centers: list[CenterDoc] | None = Field(default=None, max_length=200, description=SECTION)
    protocol_plans: list[ProtocolPlanDoc] | None = Field(
        default=None, max_length=500, description=SECTION
    )
    power_plans: list[PowerPlanDoc] | None = Field(
        default=None, max_length=500, description=SECTION
    )
    release_plans: list[ReleasePlanDoc] | None = Field(
        default=None, max_length=500, description=SECTION
    )
    pools: list[PoolDoc] | None = Field(default=None, max_length=1000, description=SECTION)
    policies: list[PolicyDoc] | None = Field(default=None, max_length=1000, description=SECTION)
    identity_sources: list[SourceDoc] | None = Field(
        default=None, max_length=100, description=SECTION
    )


class ChangeOut(Out):
    action: str = Field(
        description="create, update or delete; release (with force): an assignment of a "
        "deleted pool ended, the desktop named, its holder in fields"
    )
    section: str
    name: str
    fields: list[str] = Field(
        description="what a create sets or an update changes; a release: who held it"
    )


class RefusalOut(Out):
    status: int
    detail: str


class OutcomeOut(Out):
    applied: bool
    changes: list[ChangeOut]
    unchanged: int = Field(description="objects the document names that are already so")
    refused: RefusalOut | None = Field(
        description="what refuses the document (a plan only: apply answers with the error)"
    )


TenantParam = Annotated[
    str | None,
    Query(
        max_length=64,
        description="the tenant (a global administrator's choice); default your own",
    ),
]


def _catalogs() -> dict[str, Catalog[Any]]:
    """The catalogs the document's objects are written through: the same resources,
    hooks and stronger-account rule as the one-object routes."""
    specs = [*inventory.SPECS, pools.SPEC, *policies.SPECS, *identity.SPECS, access.ROLES]
    return {
        spec.path: Catalog(spec.catalog, spec.path, standing.check_reach)
        for spec in specs
        if spec.path
        in {
            "roles",
            "centers",
            "protocol-plans",
            "power-plans",
            "release-plans",
            "pools",
            "policies",
            "identity-sources",
            "assignment-rules",
        }
    }


Force = Annotated[
    bool,
    Query(
        description="release the assignments of a pool the document deletes, instead of "
        "refusing (needs assignments:delete; stronger accounts' desktops still refuse)"
    ),
]


def _document(body: ConfigDocument) -> dict[str, Any]:
    named = body.model_fields_set
    return {k: v for k, v in body.model_dump(mode="json").items() if k in named}


def router() -> APIRouter:
    r = APIRouter()
    catalogs = _catalogs()

    @r.get(
        "/config",
        tags=["config"],
        summary="Export a tenant's configuration as one document",
        response_model=ConfigDocument,
        response_model_exclude_none=False,
    )
    def export_config(ctx: Ctx, who: AdminReader, tenant_id: TenantParam = None) -> Any:
        """Roles, centers, plans, pools, policies and identity sources with their rules,
        by name; secrets never (``stored`` stands for them)."""
        tenant = config_document.tenant_of(ctx, who, tenant_id)
        return config_document.export(ctx, who, tenant)

    @r.post(
        "/config/plan",
        tags=["config"],
        summary="What applying a configuration document would change",
        response_model=OutcomeOut,
        openapi_extra={"x-permission": "config:read"},
    )
    def plan_config(
        body: ConfigDocument,
        ctx: Ctx,
        who: AdminReader,
        tenant_id: TenantParam = None,
        force: Force = False,
    ) -> dict[str, Any]:
        """Rehearsed and rolled back: the changes, and what would refuse them."""
        tenant = config_document.tenant_of(ctx, who, tenant_id)
        outcome = config_code.plan(ctx, who, tenant, _document(body), catalogs, force=force)
        return outcome.as_dict(applied=False)

    @r.post(
        "/config/apply",
        tags=["config"],
        summary="Apply a configuration document, all or nothing",
        response_model=OutcomeOut,
    )
    def apply_config(
        body: ConfigDocument,
        ctx: Ctx,
        who: AdminWriter,
        tenant_id: TenantParam = None,
        force: Force = False,
    ) -> dict[str, Any]:
        """Every change in one transaction, or none; applying the same document again
        changes nothing."""
        tenant = config_document.tenant_of(ctx, who, tenant_id)
        outcome = config_code.apply(ctx, who, tenant, _document(body), catalogs, force=force)
        return outcome.as_dict(applied=True)

    return r

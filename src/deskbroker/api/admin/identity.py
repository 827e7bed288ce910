"""Admin resources for identity sources, assignment rules and users."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Response
from pydantic import Field, StringConstraints

from deskbroker.api.admin.crud import ResourceSpec, add_routes, scope
from deskbroker.api.deps import AdminWriter, Ctx
from deskbroker.api.schemas import Body, Id, Name, Out, Secrets, Stamped, Username
from deskbroker.domain.rules import Conditions
from deskbroker.domain.second_factor import SecondFactorMode
from deskbroker.domain.user_bounds import (
    ATTRIBUTES_WORDS,
    GROUPS_WORDS,
    UserAttributes,
    UserGroups,
)
from deskbroker.services import identity_admin

# A built-in role or a custom role of the tenant, checked when written.
RoleName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=40, strip_whitespace=True),
    Field(
        description="a built-in role (user, helpdesk, auditor, tenant_admin, "
        "global_admin) or the name of one of the tenant's custom roles"
    ),
]


# --- identity sources ----------------------------------------------------------------
class SourceIn(Body):
    name: Name
    kind: Name
    domain: Annotated[str, StringConstraints(max_length=200, to_lower=True)] = ""
    position: int = Field(default=0, ge=0, le=10000)
    enabled: bool = True
    params: dict[str, Any] = Field(default_factory=dict)
    secrets: Secrets | None = Field(default=None, description="write-only; encrypted at rest")
    second_factor: SecondFactorMode = Field(
        default=SecondFactorMode.OFF,
        description="TOTP codes at login: off; optional (users who enrolled give one); "
        "required (everyone; users enrol on their next login)",
    )
    tenant_id: Id | None = None


class SourcePatch(Body):
    name: Name | None = None
    domain: Annotated[str, StringConstraints(max_length=200, to_lower=True)] | None = None
    position: int | None = Field(default=None, ge=0, le=10000)
    enabled: bool | None = None
    params: dict[str, Any] | None = None
    secrets: Secrets | None = Field(default=None, description="write-only; null removes them")
    second_factor: SecondFactorMode | None = None


class SourceOut(Stamped):
    name: str
    kind: str
    domain: str
    position: int
    enabled: bool
    params: dict[str, Any]
    has_secrets: bool
    second_factor: SecondFactorMode
    set_by_global_admin: bool = Field(
        description="last created or changed by a global administrator: only such a source "
        "is sent unknown names in a tenant that holds a global administrator"
    )


# --- assignment rules ----------------------------------------------------------------
class RuleIn(Body):
    identity_source_id: Id
    name: Annotated[str, StringConstraints(max_length=100)] = ""
    position: int = Field(default=0, ge=0, le=10000)
    conditions: Conditions = Field(default_factory=Conditions)
    policy_id: Id | None = None
    role: RoleName = "user"
    tenant_id: Id | None = None


class RulePatch(Body):
    name: Annotated[str, StringConstraints(max_length=100)] | None = None
    position: int | None = Field(default=None, ge=0, le=10000)
    conditions: Conditions | None = None
    policy_id: Id | None = None
    role: RoleName | None = None


class RuleOut(Stamped):
    identity_source_id: str
    name: str
    position: int
    conditions: dict[str, Any]
    policy_id: str | None
    role: str


# --- users ---------------------------------------------------------------------------
# Groups and attributes are bounded (``domain.user_bounds``): every row is read whole by
# the listing, the login path and the webhook vetting, so one row must stay small.


class UserIn(Body):
    identity_source_id: Id
    username: Username
    display_name: Annotated[str, StringConstraints(max_length=200)] = ""
    email: Annotated[str, StringConstraints(max_length=320)] = ""
    password: Annotated[str, StringConstraints(min_length=8, max_length=1024)] | None = None
    role: RoleName = "user"
    groups: UserGroups = Field(default_factory=list, description=GROUPS_WORDS)
    attributes: UserAttributes = Field(default_factory=dict, description=ATTRIBUTES_WORDS)
    disabled: bool = False
    tenant_id: Id | None = None


class UserPatch(Body):
    display_name: Annotated[str, StringConstraints(max_length=200)] | None = None
    email: Annotated[str, StringConstraints(max_length=320)] | None = None
    password: Annotated[str, StringConstraints(min_length=8, max_length=1024)] | None = None
    role: RoleName | None = None
    groups: UserGroups | None = Field(default=None, description=GROUPS_WORDS)
    attributes: UserAttributes | None = Field(default=None, description=ATTRIBUTES_WORDS)
    disabled: bool | None = None


class UserOut(Out):
    id: str
    tenant_id: str
    identity_source_id: str
    username: str
    display_name: str
    email: str
    role: str
    groups: list[str]
    attributes: dict[str, Any]
    disabled: bool
    has_password: bool
    totp_enrolled: bool
    created_at: datetime
    updated_at: datetime


SPECS: list[ResourceSpec[Any]] = [
    ResourceSpec(
        path="identity-sources",
        resource=identity_admin.IDENTITY_SOURCES,
        read=SourceOut,
        create=SourceIn,
        update=SourcePatch,
        filters={"name": str, "kind": str, "domain": str},
    ),
    ResourceSpec(
        path="assignment-rules",
        resource=identity_admin.ASSIGNMENT_RULES,
        read=RuleOut,
        create=RuleIn,
        update=RulePatch,
        filters={"identity_source_id": str, "policy_id": str, "role": str},
    ),
    ResourceSpec(
        path="users",
        resource=identity_admin.USERS,
        read=UserOut,
        create=UserIn,
        update=UserPatch,
        filters={"username": str, "identity_source_id": str, "role": str, "disabled": bool},
    ),
]


def router() -> APIRouter:
    r = APIRouter()
    for spec in SPECS:
        add_routes(r, spec)

    @r.delete(
        "/users/{item_id}/totp",
        tags=["users"],
        status_code=204,
        summary="Reset a user's second factor",
        description="For a user who lost their authenticator app: they log in with their "
        "password alone (optional mode) or enrol again (required mode); a login waiting "
        "for a code is ended.",
        openapi_extra={"x-permission": "users:reset-totp"},
    )
    def reset_totp(item_id: str, ctx: Ctx, who: AdminWriter) -> Response:
        identity_admin.reset_second_factor(ctx, who, scope(who), item_id)
        return Response(status_code=204)

    return r

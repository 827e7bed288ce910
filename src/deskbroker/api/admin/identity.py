"""Admin resources for identity sources, assignment rules and users."""

from __future__ import annotations

import ipaddress
import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import Field, StringConstraints, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from deskbroker.api.admin.crud import ResourceSpec, add_routes, must_exist
from deskbroker.api.schemas import Body, FilterIn, Id, Name, Out, Secrets, Stamped
from deskbroker.domain.rules import zone
from deskbroker.errors import Conflict, Forbidden
from deskbroker.identity.base import validate_params
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import AssignmentRuleRow, Desktop, IdentitySource, Policy, User


class Role(StrEnum):
    USER = "user"
    HELPDESK = "helpdesk"
    AUDITOR = "auditor"
    TENANT_ADMIN = "tenant_admin"
    GLOBAL_ADMIN = "global_admin"


# --- identity sources ----------------------------------------------------------------
class SourceIn(Body):
    name: Name
    kind: Name
    domain: Annotated[str, StringConstraints(max_length=200, to_lower=True)] = ""
    position: int = Field(default=0, ge=0, le=10000)
    enabled: bool = True
    params: dict[str, Any] = Field(default_factory=dict)
    secrets: Secrets | None = Field(default=None, description="write-only; encrypted at rest")
    tenant_id: Id | None = None


class SourcePatch(Body):
    name: Name | None = None
    domain: Annotated[str, StringConstraints(max_length=200, to_lower=True)] | None = None
    position: int | None = Field(default=None, ge=0, le=10000)
    enabled: bool | None = None
    params: dict[str, Any] | None = None
    secrets: Secrets | None = Field(default=None, description="write-only; null removes them")


class SourceOut(Stamped):
    name: str
    kind: str
    domain: str
    position: int
    enabled: bool
    params: dict[str, Any]
    has_secrets: bool


def _prepare_source(
    session: Session, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
) -> dict[str, Any]:
    kind = data.get("kind") or existing.kind
    if "params" in data or existing is None:
        data["params"] = validate_params(kind, data.get("params") or {})
    if "secrets" in data:
        secrets = data.pop("secrets")
        data["secrets_sealed"] = ctx.secrets.seal(json.dumps(secrets)) if secrets else None
    return {k: v for k, v in data.items() if v is not None or k == "secrets_sealed"}


def _source_out(session: Session, source: Any) -> dict[str, Any]:
    out = {c.key: getattr(source, c.key) for c in IdentitySource.__table__.columns}
    out["has_secrets"] = bool(source.secrets_sealed)
    return out


def _source_in_use(session: Session, source: Any) -> None:
    user = session.scalars(
        select(User.username).where(User.identity_source_id == source.id).limit(1)
    ).first()
    if user is not None:
        raise Conflict(f"identity source {source.name} still has users (e.g. {user})")


# --- assignment rules ----------------------------------------------------------------
class WindowIn(Body):
    days: list[Annotated[int, Field(ge=0, le=6)]] = Field(min_length=1, max_length=7)
    start: Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]
    end: Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]
    timezone: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        default="UTC", description="IANA time zone the window is read in, e.g. Europe/Paris"
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone(value)  # raises ValueError in words
        return value


class Conditions(Body):
    group: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None
    attributes: list[FilterIn] = Field(default_factory=list, max_length=20)
    ou: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None
    client_cidr: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    window: WindowIn | None = None

    @field_validator("client_cidr")
    @classmethod
    def _cidr(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a network such as 10.0.0.0/8") from exc
        return value


class RuleIn(Body):
    identity_source_id: Id
    name: Annotated[str, StringConstraints(max_length=100)] = ""
    position: int = Field(default=0, ge=0, le=10000)
    conditions: Conditions = Field(default_factory=Conditions)
    policy_id: Id | None = None
    role: Role = Role.USER
    tenant_id: Id | None = None


class RulePatch(Body):
    name: Annotated[str, StringConstraints(max_length=100)] | None = None
    position: int | None = Field(default=None, ge=0, le=10000)
    conditions: Conditions | None = None
    policy_id: Id | None = None
    role: Role | None = None


class RuleOut(Stamped):
    identity_source_id: str
    name: str
    position: int
    conditions: dict[str, Any]
    policy_id: str | None
    role: str


def _prepare_rule(
    session: Session, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
) -> dict[str, Any]:
    if "identity_source_id" in data:
        must_exist(session, IdentitySource, data["identity_source_id"], tenant, "identity source")
    must_exist(session, Policy, data.get("policy_id"), tenant, "policy")
    if "role" in data and data["role"] is not None:
        data["role"] = Role(data["role"]).value
        if data["role"] == Role.GLOBAL_ADMIN.value:
            _only_global_admin(session, "make a rule that grants global_admin")
    return data


def _only_global_admin(session: Session, what: str) -> None:
    if session.info.get("actor_role") != Role.GLOBAL_ADMIN.value:
        raise Forbidden(f"only a global administrator can {what}")


# --- users ---------------------------------------------------------------------------
Username = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]


class UserIn(Body):
    identity_source_id: Id
    username: Username
    display_name: Annotated[str, StringConstraints(max_length=200)] = ""
    email: Annotated[str, StringConstraints(max_length=320)] = ""
    password: Annotated[str, StringConstraints(min_length=8, max_length=1024)] | None = None
    role: Role = Role.USER
    groups: list[Annotated[str, StringConstraints(max_length=500)]] = Field(
        default_factory=list, max_length=500
    )
    attributes: dict[str, Annotated[str, StringConstraints(max_length=2000)]] = Field(
        default_factory=dict
    )
    disabled: bool = False
    tenant_id: Id | None = None

    @field_validator("username")
    @classmethod
    def _printable(cls, value: str) -> str:
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("a username cannot contain control characters such as newlines")
        return value


class UserPatch(Body):
    display_name: Annotated[str, StringConstraints(max_length=200)] | None = None
    email: Annotated[str, StringConstraints(max_length=320)] | None = None
    password: Annotated[str, StringConstraints(min_length=8, max_length=1024)] | None = None
    role: Role | None = None
    groups: list[Annotated[str, StringConstraints(max_length=500)]] | None = Field(
        default=None, max_length=500
    )
    attributes: dict[str, Annotated[str, StringConstraints(max_length=2000)]] | None = None
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
    created_at: datetime
    updated_at: datetime


def _prepare_user(
    session: Session, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
) -> dict[str, Any]:
    if "identity_source_id" in data:
        must_exist(session, IdentitySource, data["identity_source_id"], tenant, "identity source")
    if existing is not None and existing.role == Role.GLOBAL_ADMIN.value:
        _only_global_admin(session, f"change the global administrator {existing.username}")
    if "password" in data:
        password = data.pop("password")
        # Null removes the password: the user can no longer log in with one.
        data["password_hash"] = None if password is None else ctx.hashing.hash(password)
    if data.get("role") is not None:
        data["role"] = Role(data["role"]).value
        if data["role"] == Role.GLOBAL_ADMIN.value:
            _only_global_admin(session, "make another global administrator")
    return data


def _user_out(session: Session, user: Any) -> dict[str, Any]:
    out = {c.key: getattr(user, c.key) for c in User.__table__.columns if c.key != "password_hash"}
    out["has_password"] = bool(user.password_hash)
    return out


def _user_in_use(session: Session, user: Any) -> None:
    if user.id == session.info.get("actor_id"):
        raise Conflict("you cannot delete your own account; ask another administrator")
    if user.role == Role.GLOBAL_ADMIN.value:
        _only_global_admin(session, f"delete the global administrator {user.username}")
    held = session.scalars(
        select(Desktop.name).where(Desktop.assigned_user_id == user.id).limit(1)
    ).first()
    if held is not None:
        raise Conflict(f"user {user.username} holds desktop {held}; release it first")


SPECS: list[ResourceSpec[Any]] = [
    ResourceSpec(
        path="identity-sources",
        label="identity source",
        model=IdentitySource,
        read=SourceOut,
        create=SourceIn,
        update=SourcePatch,
        filters={"name": str, "kind": str, "domain": str},
        prepare=_prepare_source,
        to_read=_source_out,
        before_delete=_source_in_use,
    ),
    ResourceSpec(
        path="assignment-rules",
        label="assignment rule",
        model=AssignmentRuleRow,
        read=RuleOut,
        create=RuleIn,
        update=RulePatch,
        filters={"identity_source_id": str, "policy_id": str, "role": str},
        prepare=_prepare_rule,
    ),
    ResourceSpec(
        path="users",
        label="user",
        model=User,
        read=UserOut,
        create=UserIn,
        update=UserPatch,
        filters={"username": str, "identity_source_id": str, "role": str, "disabled": bool},
        prepare=_prepare_user,
        to_read=_user_out,
        before_delete=_user_in_use,
    ),
]


def router() -> APIRouter:
    r = APIRouter()
    for spec in SPECS:
        add_routes(r, spec)
    return r

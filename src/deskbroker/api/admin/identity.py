"""Admin resources for identity sources, assignment rules and users."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Response
from pydantic import Field, StringConstraints, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from deskbroker.api.admin import standing
from deskbroker.api.admin.crud import ResourceSpec, add_routes, must_exist, scope
from deskbroker.api.deps import AdminWriter, Ctx
from deskbroker.api.permissions import catalog
from deskbroker.api.schemas import Body, FilterIn, Id, Name, Out, Secrets, Stamped, Username
from deskbroker.domain.permissions import BuiltinRole, Permissions
from deskbroker.domain.rules import Identity, zone
from deskbroker.domain.second_factor import SecondFactorMode
from deskbroker.errors import Conflict, Forbidden, InvalidInput
from deskbroker.identity.base import source_kinds, validate_params
from deskbroker.security import TokenClaims
from deskbroker.services import access, outbound_params
from deskbroker.services.config_cache import rule_from_row
from deskbroker.services.context import BrokerContext
from deskbroker.store import events, totp
from deskbroker.store.claims import folded_name
from deskbroker.store.repository import Repository
from deskbroker.store.tables import AssignmentRuleRow, Desktop, IdentitySource, Policy, User

Role = BuiltinRole
# A built-in role or a custom role of the tenant, checked when written.
RoleName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=40, strip_whitespace=True),
    Field(
        description="a built-in role (user, helpdesk, auditor, tenant_admin, "
        "global_admin) or the name of one of the tenant's custom roles"
    ),
]


def _grant_role(session: Session, tenant: str, role: str, what: str) -> str:
    """Refuse a role unknown to the tenant, or one that allows more than the actor may do."""
    actor: TokenClaims = session.info["actor"]
    global_actor = actor.role == Role.GLOBAL_ADMIN and actor.scopes is None
    grants = access.known_role(
        session, tenant, role, lambda name: name != Role.GLOBAL_ADMIN or global_actor
    )
    held: Permissions = session.info["actor_permissions"]
    access.check_grantable(held, grants, f"{what} the role {role}", catalog())
    return role


def _rule_roles(
    session: Session, source_id: str, username: str, groups: Any, attributes: Any
) -> set[str]:
    """The roles the source's rules could give this user at a login. Conservative: the
    rules' time windows, client networks and OUs are taken as matching, since a login
    chooses them."""
    who = Identity(
        username=username,
        groups=frozenset(str(g) for g in groups or ()),
        attributes={str(k): str(v) for k, v in (attributes or {}).items()},
    )
    rows = session.scalars(
        select(AssignmentRuleRow).where(AssignmentRuleRow.identity_source_id == source_id)
    ).all()
    found: set[str] = set()
    for row in rows:
        rule = rule_from_row(
            {c.key: getattr(row, c.key) for c in AssignmentRuleRow.__table__.columns}
        )
        anywhere = replace(rule, window=None, client_cidr=None, ou=None)
        if anywhere.matches(who, None, datetime.now(UTC)) and rule.role != Role.USER:
            found.add(rule.role)
    return found


def may_manage(
    session: Session, user: Any, what: str, *, groups: Any = None, attributes: Any = None
) -> None:
    """A user whose role allows more than the actor may not be changed by that actor: no
    taking over a stronger account by resetting its password. A user whose stored role is
    ``user`` is as strong as the roles the source's rules could give them at login."""
    roles = {user.role}
    if user.role == Role.USER:
        roles |= _rule_roles(
            session,
            user.identity_source_id,
            user.username,
            user.groups if groups is None else groups,
            user.attributes if attributes is None else attributes,
        )
    held: Permissions = session.info["actor_permissions"]
    for role in sorted(roles):
        if role == Role.GLOBAL_ADMIN.value:
            _only_global_admin(session, f"{what} {user.username}, who can be global administrator")
            continue
        grants = access.known_role(session, user.tenant_id, role, lambda _: True)
        access.check_grantable(
            held, grants, f"{what} {user.username}, whose role can be {role}", catalog()
        )


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


def _prepare_source(
    session: Session, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
) -> dict[str, Any]:
    if existing is not None:
        # Its servers, second factor and switch decide how its accounts sign in.
        standing.check_source(session, existing, "change")
    kind = data.get("kind") or existing.kind
    if "params" in data or existing is None:
        data["params"] = validate_params(kind, data.get("params") or {})
        outbound_params.vet(
            session,
            ctx,
            what=f"a {kind} identity source's",
            params_model=source_kinds()[kind].Params,
            params=data["params"],
            previous=existing.params if existing is not None else None,
            data=data,
        )
    if data.get("second_factor") is not None:
        data["second_factor"] = SecondFactorMode(data["second_factor"]).value
        driver = source_kinds().get(kind)
        asks = data["second_factor"] != SecondFactorMode.OFF
        if asks and driver is not None and not driver.accepts_passwords:
            # Its users sign in at their provider, which runs its own second factor.
            raise InvalidInput(
                f"a {kind} source takes no passwords here, so it cannot ask for one-time "
                "codes: set second_factor on the provider's side"
            )
    if "secrets" in data:
        secrets = data.pop("secrets")
        data["secrets_sealed"] = ctx.secrets.seal(json.dumps(secrets)) if secrets else None
    # Whoever last set it up vouches for it: a tenant administrator's directory is not
    # sent the unknown names of a tenant that holds a global administrator.
    actor: TokenClaims = session.info["actor"]
    data["set_by_global_admin"] = (
        actor.role == BuiltinRole.GLOBAL_ADMIN.value and actor.scopes is None
    )
    return {k: v for k, v in data.items() if v is not None or k == "secrets_sealed"}


def _source_out(session: Session, source: Any) -> dict[str, Any]:
    out = {c.key: getattr(source, c.key) for c in IdentitySource.__table__.columns}
    out["has_secrets"] = bool(source.secrets_sealed)
    return out


def _source_in_use(session: Session, source: Any) -> None:
    standing.check_source(session, source, "delete")
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


def _prepare_rule(
    session: Session, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
) -> dict[str, Any]:
    if "identity_source_id" in data:
        must_exist(session, IdentitySource, data["identity_source_id"], tenant, "identity source")
    must_exist(session, Policy, data.get("policy_id"), tenant, "policy")
    if existing is not None and existing.role != Role.USER:
        # Whoever changes a rule's conditions decides who gets its role.
        _grant_role(session, tenant, existing.role, "change a rule that grants")
    if "role" in data and data["role"] is not None:
        data["role"] = _grant_role(session, tenant, data["role"], "make a rule that grants")
    named = {k: v for k, v in data.items() if v is not None}
    if existing is None:
        standing.check_rule(session, tenant, data["identity_source_id"], [named], "make")
    else:
        stored = standing.rule_columns(existing)
        standing.check_rule(
            session, tenant, existing.identity_source_id, [stored, {**stored, **named}], "change"
        )
    return data


def _rule_in_use(session: Session, rule: Any) -> None:
    standing.check_rule(
        session,
        rule.tenant_id,
        rule.identity_source_id,
        [standing.rule_columns(rule)],
        "delete",
    )


def _only_global_admin(session: Session, what: str) -> None:
    actor: TokenClaims | None = session.info.get("actor")
    # A scoped API token of a global administrator is not one: it was meant to do less.
    if actor is None or actor.role != Role.GLOBAL_ADMIN.value:
        raise Forbidden(f"only a global administrator can {what}")
    if actor.scopes is not None:
        raise Forbidden(f"only a global administrator (not an API token) can {what}")


# --- users ---------------------------------------------------------------------------


class UserIn(Body):
    identity_source_id: Id
    username: Username
    display_name: Annotated[str, StringConstraints(max_length=200)] = ""
    email: Annotated[str, StringConstraints(max_length=320)] = ""
    password: Annotated[str, StringConstraints(min_length=8, max_length=1024)] | None = None
    role: RoleName = "user"
    groups: list[Annotated[str, StringConstraints(max_length=500)]] = Field(
        default_factory=list, max_length=500
    )
    attributes: dict[str, Annotated[str, StringConstraints(max_length=2000)]] = Field(
        default_factory=dict
    )
    disabled: bool = False
    tenant_id: Id | None = None


class UserPatch(Body):
    display_name: Annotated[str, StringConstraints(max_length=200)] | None = None
    email: Annotated[str, StringConstraints(max_length=320)] | None = None
    password: Annotated[str, StringConstraints(min_length=8, max_length=1024)] | None = None
    role: RoleName | None = None
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
    totp_enrolled: bool
    created_at: datetime
    updated_at: datetime


def _prepare_user(
    session: Session, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
) -> dict[str, Any]:
    if "identity_source_id" in data:
        must_exist(session, IdentitySource, data["identity_source_id"], tenant, "identity source")
    if existing is not None:
        may_manage(session, existing, "change")
    else:
        # The same name in a second source makes a bare login name ambiguous, and the
        # owner of that source could then be sent the first account's password.
        name = str(data.get("username") or "")
        for other in session.scalars(
            select(User).where(
                User.tenant_id == tenant,
                User.identity_source_id != data.get("identity_source_id"),
                folded_name(name),
            )
        ).all():
            may_manage(session, other, "make a second account of the name of")
    if "password" in data:
        password = data.pop("password")
        # Null removes the password: the user can no longer log in with one.
        data["password_hash"] = None if password is None else ctx.hashing.hash(password)
    if data.get("role") is not None:
        data["role"] = _grant_role(session, tenant, data["role"], "give a user")
    # The user as they will be: with groups or attributes that a rule turns into a role
    # the actor may not grant, they would be that role at their next login.
    role = data.get("role") or (existing.role if existing is not None else Role.USER.value)
    if role == Role.USER:
        source = data.get("identity_source_id") or (existing.identity_source_id if existing else "")
        username = data.get("username") or (existing.username if existing else "")
        groups = (
            data["groups"]
            if data.get("groups") is not None
            else (existing.groups if existing else [])
        )
        attributes = (
            data["attributes"]
            if data.get("attributes") is not None
            else (existing.attributes if existing else {})
        )
        for granted in sorted(_rule_roles(session, source, username, groups, attributes)):
            _grant_role(session, tenant, granted, "make a user whom a rule gives")
    if existing is not None and (
        "password_hash" in data
        or (data.get("disabled") and not existing.disabled)
        or (data.get("role") is not None and data["role"] != existing.role)
    ):
        # A new password, a disabled account or another role: the session tokens the user
        # holds stop working at their next request.
        data["token_generation"] = (existing.token_generation or 0) + 1
    return data


# Never rendered: the hash, and the second factor's sealed secret and spent step.
_USER_HIDDEN = frozenset({"password_hash", "totp_sealed", "totp_last_step", "totp_enrolled_at"})


def _user_out(session: Session, user: Any) -> dict[str, Any]:
    out = {c.key: getattr(user, c.key) for c in User.__table__.columns if c.key not in _USER_HIDDEN}
    out["has_password"] = bool(user.password_hash)
    out["totp_enrolled"] = user.totp_enrolled_at is not None
    return out


def _user_in_use(session: Session, user: Any) -> None:
    if user.id == session.info.get("actor_id"):
        raise Conflict("you cannot delete your own account; ask another administrator")
    may_manage(session, user, "delete")
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
        before_delete=_rule_in_use,
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
        with ctx.db.write() as session:
            session.info.update(access.actor_info(ctx, who))
            user = Repository(User, "user").get(session, item_id, scope(who))
            may_manage(session, user, "reset the second factor of")
            totp.clear(session, user.id)
            events.append(
                session,
                "admin.totp_reset",
                tenant_id=user.tenant_id,
                actor=who.username,
                user_id=who.user_id,
                detail={"resource": "users", "id": user.id, "name": user.username},
            )
        return Response(status_code=204)

    return r

"""Admin resources for access: custom roles, the permission catalog, API tokens for
automation, and sign-in lockouts."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import Field, StringConstraints
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from deskbroker.api.admin.crud import MAX_OFFSET, ResourceSpec, add_routes, scope
from deskbroker.api.admin.identity import may_manage
from deskbroker.api.deps import AdminReader, AdminWriter, Ctx, Principal
from deskbroker.api.permissions import catalog
from deskbroker.api.schemas import Body, Name, Out, Stamped
from deskbroker.domain.permissions import BUILTIN, BuiltinRole, Permissions, check_grants
from deskbroker.errors import Conflict, Forbidden, InvalidInput, NotFound
from deskbroker.security import AGENT_ROLE, API_TOKEN_ROLE, TokenClaims
from deskbroker.services import access
from deskbroker.services.context import BrokerContext
from deskbroker.services.failed_names import UNKNOWN
from deskbroker.services.throttle import account_key, address_key
from deskbroker.store import events, throttle
from deskbroker.store.repository import Repository
from deskbroker.store.tables import (
    ApiToken,
    AssignmentRuleRow,
    CustomRole,
    LoginThrottle,
    User,
    utcnow,
)

# The roles tokens of agents and of automation name: never a person's role.
RESERVED_ROLES = frozenset({AGENT_ROLE, API_TOKEN_ROLE})
_ROLE_NAME = re.compile(r"^[a-z][a-z0-9_-]{1,39}$")
Grants = Annotated[
    list[Annotated[str, StringConstraints(min_length=3, max_length=81)]],
    Field(max_length=200, description="resource:action grants, e.g. pools:read, sessions:*"),
]


# --- custom roles --------------------------------------------------------------------
class RoleIn(Body):
    name: Annotated[str, StringConstraints(min_length=2, max_length=40, strip_whitespace=True)]
    description: Annotated[str, StringConstraints(max_length=500)] = ""
    permissions: Grants
    tenant_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None


class RolePatch(Body):
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    permissions: Grants | None = None


class RoleOut(Stamped):
    name: str
    description: str
    permissions: list[str]


def _prepare_role(
    session: Session, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
) -> dict[str, Any]:
    if "name" in data:
        name = data["name"]
        if name in BUILTIN or name in RESERVED_ROLES or not _ROLE_NAME.match(name):
            raise InvalidInput(
                f"role name {name!r}: use 2 to 40 lower-case letters, digits, - or _, starting "
                "with a letter, and not a built-in role's name"
            )
    if data.get("permissions") is not None:
        grants = check_grants(data["permissions"], catalog())
        held: Permissions = session.info["actor_permissions"]
        access.check_grantable(held, Permissions.of(grants), "write this role", catalog())
        data["permissions"] = grants
    if existing is not None:
        # A role someone holds can only be narrowed or widened by one who may grant it.
        current = Permissions.of(existing.permissions)
        access.check_grantable(
            session.info["actor_permissions"], current, f"change role {existing.name}", catalog()
        )
    return data


def _role_in_use(session: Session, role: Any) -> None:
    holder = session.scalars(
        select(User.username)
        .where(User.tenant_id == role.tenant_id, User.role == role.name)
        .limit(1)
    ).first()
    if holder is not None:
        raise Conflict(f"role {role.name} is held by user {holder}; give them another role first")
    rule = session.scalars(
        select(AssignmentRuleRow.name)
        .where(AssignmentRuleRow.tenant_id == role.tenant_id, AssignmentRuleRow.role == role.name)
        .limit(1)
    ).first()
    if rule is not None:
        raise Conflict(f"role {role.name} is granted by assignment rule {rule!r}; change it first")


ROLES = ResourceSpec(
    path="roles",
    label="role",
    model=CustomRole,
    read=RoleOut,
    create=RoleIn,
    update=RolePatch,
    filters={"name": str},
    prepare=_prepare_role,
    before_delete=_role_in_use,
)


# --- API tokens ----------------------------------------------------------------------
class ApiTokenIn(Body):
    name: Name
    scopes: Annotated[
        list[Annotated[str, StringConstraints(min_length=3, max_length=81)]],
        Field(
            min_length=1,
            max_length=200,
            description="what the token may do, within your own role: e.g. sessions:read",
        ),
    ]
    expires_in_days: int = Field(ge=1, le=3660, description="the token stops working after")


class ApiTokenOut(Out):
    id: str
    tenant_id: str
    user_id: str
    name: str
    scopes: list[str]
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime


class ApiTokenMade(ApiTokenOut):
    token: str = Field(description="shown once: store it in your automation's secret store")


def _token_out(row: ApiToken) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in ApiToken.__table__.columns}


# --- lockouts ------------------------------------------------------------------------
def _known_accounts(session: Session, secret: str, rows: list[LoginThrottle]) -> dict[str, str]:
    """The throttle keys of the users of the tenants ``rows`` name, to their names.

    An account's counter is keyed by a tag of the name (services/throttle.py), since the
    name typed may be a password; a listing names it only when it is a user's."""
    tenants = {row.key.split(":")[1] for row in rows if row.key.startswith("account:")}
    if not tenants:
        return {}
    users = session.execute(
        select(User.tenant_id, User.username).where(User.tenant_id.in_(tenants))
    ).all()
    return {account_key(secret, t, name): name for t, name in users}


def _lockout_out(row: LoginThrottle, known: dict[str, str]) -> dict[str, Any]:
    kind, _, rest = row.key.partition(":")
    if kind == "account":
        subject = known.get(row.key) or UNKNOWN + rest.partition(":")[2].lstrip("#")
    else:
        subject = rest
    return {
        "key": row.key,
        "kind": kind,
        "subject": subject,
        "failures": row.failures,
        "locked_until": row.locked_until,
    }


def _audit(
    session: Session, who: TokenClaims, kind: str, tenant_id: str | None, **detail: Any
) -> None:
    """An access change, logged in the tenant it concerns (not the global admin's own)."""
    events.append(
        session,
        kind,
        tenant_id=tenant_id,
        actor=who.username,
        user_id=who.user_id,
        detail=detail,
    )


def router() -> APIRouter:
    r = APIRouter()
    add_routes(r, ROLES)

    @r.get("/permissions", tags=["roles"], summary="Every grantable permission and role")
    def permission_catalog(ctx: Ctx, who: Principal) -> dict[str, Any]:
        found = catalog()
        mine = access.effective(ctx, who)
        if mine.empty:
            raise Forbidden("This needs an administrator, helpdesk or auditor role.")
        return {
            "resources": {res: sorted(actions) for res, actions in found.items()},
            "builtin_roles": {
                role.value: sorted(f"{r}:{a}" for r, a in BUILTIN[role].expand(found))
                for role in BuiltinRole
            },
            "mine": sorted(f"{r}:{a}" for r, a in mine.expand(found)),
        }

    @r.post(
        "/api-tokens",
        tags=["api-tokens"],
        status_code=201,
        response_model=ApiTokenMade,
        summary="Make an API token for automation (shown once)",
    )
    def create_api_token(body: ApiTokenIn, ctx: Ctx, who: AdminWriter) -> dict[str, Any]:
        if who.is_api_token or who.scopes is not None:
            raise Forbidden("an API token cannot make API tokens; sign in as a person")
        most = ctx.settings.api_token_max_days
        if body.expires_in_days > most:
            raise InvalidInput(f"expires_in_days: at most {most} days on this broker")
        grants = check_grants(body.scopes, catalog())
        access.check_grantable(
            access.effective(ctx, who), Permissions.of(grants), "make this token", catalog()
        )
        expires = utcnow() + timedelta(days=body.expires_in_days)
        with ctx.db.write() as session:
            row = ApiToken(
                tenant_id=who.tenant_id,
                user_id=who.user_id,
                name=body.name,
                scopes=grants,
                expires_at=expires,
            )
            session.add(row)
            session.flush()
            token = ctx.signer.issue_api(
                token_id=row.id,
                user_id=who.user_id,
                tenant_id=who.tenant_id,
                username=who.username,
                expires_at=int(expires.timestamp()),
            )
            _audit(
                session,
                who,
                "admin.create",
                who.tenant_id,
                resource="api-tokens",
                id=row.id,
                name=body.name,
                scopes=grants,
            )
            out = _token_out(row)
        return {**out, "token": token}

    @r.get("/api-tokens", tags=["api-tokens"], summary="API tokens (never the tokens)")
    def list_api_tokens(
        ctx: Ctx,
        who: AdminReader,
        user_id: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
    ) -> dict[str, Any]:
        query = select(ApiToken)
        tenant = scope(who)
        if tenant is not None:
            query = query.where(ApiToken.tenant_id == tenant)
        if user_id:
            query = query.where(ApiToken.user_id == user_id)
        with ctx.db.read() as session:
            rows = session.scalars(
                query.order_by(ApiToken.created_at, ApiToken.id).limit(limit).offset(offset)
            ).all()
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            items = [_token_out(t) for t in rows]
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    @r.delete(
        "/api-tokens/{token_id}",
        tags=["api-tokens"],
        status_code=204,
        summary="Revoke an API token at once",
    )
    def revoke_api_token(token_id: str, ctx: Ctx, who: AdminWriter) -> Response:
        with ctx.db.write() as session:
            row = Repository(ApiToken, "API token").get(session, token_id, scope(who))
            if row.revoked_at is None:
                session.execute(
                    update(ApiToken).where(ApiToken.id == row.id).values(revoked_at=utcnow())
                )
                _audit(
                    session,
                    who,
                    "admin.delete",
                    row.tenant_id,
                    resource="api-tokens",
                    id=row.id,
                    name=row.name,
                )
        return Response(status_code=204)

    @r.get("/lockouts", tags=["lockouts"], summary="Accounts and addresses with failed sign-ins")
    def list_lockouts(ctx: Ctx, who: AdminReader) -> dict[str, Any]:
        tenant = scope(who)
        query = select(LoginThrottle).order_by(LoginThrottle.key)
        if tenant is not None:
            # A tenant sees its accounts; addresses span tenants.
            query = query.where(LoginThrottle.key.startswith(f"account:{tenant}:", autoescape=True))
        with ctx.db.read() as session:
            rows = list(session.scalars(query.limit(1000)).all())
            known = _known_accounts(session, ctx.settings.effective_secret_key, rows)
            items = [_lockout_out(row, known) for row in rows]
        return {"items": items, "total": len(items)}

    @r.post(
        "/users/{user_id}/unlock",
        tags=["users"],
        summary="Clear a user's failed sign-ins and lockout",
    )
    def unlock_user(user_id: str, ctx: Ctx, who: AdminWriter) -> dict[str, Any]:
        with ctx.db.write() as session:
            user = Repository(User, "user").get(session, user_id, scope(who))
            # Clearing a stronger account's failed guesses would help whoever guesses.
            session.info.update(access.actor_info(ctx, who))
            may_manage(session, user, "unlock")
            key = account_key(ctx.settings.effective_secret_key, user.tenant_id, user.username)
            cleared = throttle.forget(session, [key])
            _audit(
                session,
                who,
                "admin.unlock",
                user.tenant_id,
                resource="users",
                id=user.id,
                name=user.username,
            )
        return {"user_id": user_id, "unlocked": bool(cleared)}

    @r.delete(
        "/lockouts/addresses/{address}",
        tags=["lockouts"],
        status_code=204,
        summary="Clear a client address's failed sign-ins (global administrators)",
    )
    def unlock_address(address: str, ctx: Ctx, who: AdminWriter) -> Response:
        if scope(who) is not None:
            raise Forbidden("only a global administrator can unlock an address: they span tenants")
        with ctx.db.write() as session:
            if not throttle.forget(session, [address_key(address)]):
                raise NotFound(f"address {address} has no failed sign-ins")
            _audit(session, who, "admin.unlock", None, resource="lockouts", address=address)
        return Response(status_code=204)

    return r

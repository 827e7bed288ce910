"""Admin resources for access: custom roles, the permission catalog, API tokens for
automation, and sign-in lockouts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import Field, StringConstraints

from deskbroker.api.admin.crud import MAX_OFFSET, ResourceSpec, add_routes, scope
from deskbroker.api.deps import AdminReader, AdminWriter, Ctx, Principal
from deskbroker.api.permissions import catalog
from deskbroker.api.schemas import Body, Name, Out, Stamped
from deskbroker.domain.permissions import BUILTIN, BuiltinRole
from deskbroker.errors import Forbidden
from deskbroker.services import access, admin_access

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


ROLES = ResourceSpec(
    path="roles",
    resource=admin_access.ROLES,
    read=RoleOut,
    create=RoleIn,
    update=RolePatch,
    filters={"name": str},
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
        return admin_access.make_api_token(ctx, who, body.name, body.scopes, body.expires_in_days)

    @r.get("/api-tokens", tags=["api-tokens"], summary="API tokens (never the tokens)")
    def list_api_tokens(
        ctx: Ctx,
        who: AdminReader,
        user_id: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
    ) -> dict[str, Any]:
        items, total = admin_access.api_tokens(ctx, scope(who), user_id, limit, offset)
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    @r.delete(
        "/api-tokens/{token_id}",
        tags=["api-tokens"],
        status_code=204,
        summary="Revoke an API token at once",
    )
    def revoke_api_token(token_id: str, ctx: Ctx, who: AdminWriter) -> Response:
        admin_access.revoke_api_token(ctx, who, scope(who), token_id)
        return Response(status_code=204)

    @r.get("/lockouts", tags=["lockouts"], summary="Accounts and addresses with failed sign-ins")
    def list_lockouts(ctx: Ctx, who: AdminReader) -> dict[str, Any]:
        items = admin_access.lockouts(ctx, scope(who))
        return {"items": items, "total": len(items)}

    @r.post(
        "/users/{user_id}/unlock",
        tags=["users"],
        summary="Clear a user's failed sign-ins and lockout",
    )
    def unlock_user(user_id: str, ctx: Ctx, who: AdminWriter) -> dict[str, Any]:
        unlocked = admin_access.unlock_user(ctx, who, scope(who), user_id)
        return {"user_id": user_id, "unlocked": unlocked}

    @r.delete(
        "/lockouts/addresses/{address}",
        tags=["lockouts"],
        status_code=204,
        summary="Clear a client address's failed sign-ins (global administrators)",
    )
    def unlock_address(address: str, ctx: Ctx, who: AdminWriter) -> Response:
        admin_access.unlock_address(ctx, who, address)
        return Response(status_code=204)

    return r

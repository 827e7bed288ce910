"""Request dependencies: the broker context and the authenticated principal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from deskbroker.errors import Forbidden, Unauthorized
from deskbroker.security import TokenClaims
from deskbroker.services.context import BrokerContext

bearer = HTTPBearer(auto_error=False, description="A token from POST /api/v1/auth/login")

ADMIN_ROLES = frozenset({"global_admin", "tenant_admin"})
READ_ROLES = ADMIN_ROLES | {"helpdesk", "auditor"}


def context(request: Request) -> BrokerContext:
    ctx: BrokerContext = request.app.state.ctx
    return ctx


def principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> TokenClaims:
    if creds is None:
        raise Unauthorized("This needs a bearer token: log in at POST /api/v1/auth/login.")
    return context(request).signer.verify(creds.credentials)


def admin_reader(who: Annotated[TokenClaims, Depends(principal)]) -> TokenClaims:
    if who.role not in READ_ROLES:
        raise Forbidden("This needs an administrator, helpdesk or auditor role.")
    return who


def admin_writer(who: Annotated[TokenClaims, Depends(principal)]) -> TokenClaims:
    if who.role not in ADMIN_ROLES:
        raise Forbidden("This needs an administrator role.")
    return who


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


Ctx = Annotated[BrokerContext, Depends(context)]
Principal = Annotated[TokenClaims, Depends(principal)]
AdminReader = Annotated[TokenClaims, Depends(admin_reader)]
AdminWriter = Annotated[TokenClaims, Depends(admin_writer)]

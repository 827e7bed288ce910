"""Request dependencies: the broker context, its services and the authenticated principal.

The only module of the API that reads ``request.app.state`` (``api/app.py`` fills it);
routers name what they need (``Ctx``, ``Login``, ``Oidc``, ``SecondFactor``...) and
FastAPI hands it to them (tests/test_architecture.py checks that no router looks).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from deskbroker.api import permissions
from deskbroker.errors import Forbidden, InvalidInput, Unauthorized
from deskbroker.security import TokenClaims
from deskbroker.services import access
from deskbroker.services.context import BrokerContext
from deskbroker.services.login import LoginService
from deskbroker.services.oidc_signin import OidcSignIn
from deskbroker.services.second_factor import SecondFactorService
from deskbroker.services.sign_in_services import SignInServices

bearer = HTTPBearer(auto_error=False, description="A token from POST /api/v1/auth/login")

# A plain ``def`` dependency is handed to a worker thread and back, on every request that
# names it: the dependencies that only read the app's state or check a signature are
# ``async def`` (they never block), so the route's own call is the request's one thread
# hand-off. Those that may read the database stay plain functions.


def context(request: Request) -> BrokerContext:
    ctx: BrokerContext = request.app.state.ctx
    return ctx


def context_if_any(request: Request) -> BrokerContext | None:
    """The broker context, or None in an app built without one (an error handler's view)."""
    ctx: BrokerContext | None = getattr(request.app.state, "ctx", None)
    return ctx


def sign_in_services(request: Request) -> SignInServices:
    services: SignInServices = request.app.state.sign_in
    return services


def login_service(request: Request) -> LoginService:
    return sign_in_services(request).login


def oidc_service(request: Request) -> OidcSignIn:
    return sign_in_services(request).oidc


def second_factor_service(request: Request) -> SecondFactorService:
    return sign_in_services(request).second_factor


def principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> TokenClaims:
    """The caller, checked against the database: an API token's row, or a user token's
    user (disabled, role, token generation), so revocation takes effect at once."""
    who = signed_principal(request, creds)
    # An API token was just read with its row (it comes back with its scopes and its
    # user's role); a person's session token is checked against their user row.
    if who.scopes is None:
        who = access.current_holder(context(request), who)
    return who


def _signed(request: Request, creds: HTTPAuthorizationCredentials | None) -> TokenClaims:
    """The token's claims as its signature vouches for them, nothing read: an agent's
    token refused, and an API token off the admin API."""
    if creds is None:
        raise Unauthorized("This needs a bearer token: log in at POST /api/v1/auth/login.")
    who = context(request).signer.verify(creds.credentials)
    if who.is_agent:
        # A token copied off a desktop must not act as a person.
        raise Forbidden("An agent token only reports desktop events at /api/v1/agent/events.")
    if who.is_api_token and not request.url.path.startswith(permissions.ADMIN_PREFIX):
        # Automation administers; it does not sit at a desktop or enrol an authenticator.
        raise Forbidden(
            "An API token works only on the admin API (/api/v1/admin/); a person signs "
            "in at POST /api/v1/auth/login for the rest."
        )
    return who


def signed_principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> TokenClaims:
    """The caller as the token's signature vouches for them; a user token's user row is
    NOT read here (an API token's row is: it carries the token's scopes)."""
    who = _signed(request, creds)
    if who.is_api_token:
        who = access.resolve_api_token(context(request), who)
    return who


async def signed_person(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> TokenClaims:
    """A person's token as its signature vouches for them; the user row is NOT read
    here. Only for a route off the admin API whose own first statement reads that row
    and calls ``access.check_holder`` (connecting to a desktop, the login's hot
    neighbour). Reads nothing, so it runs on the event loop."""
    who = _signed(request, creds)
    if who.is_api_token:  # only on an admin path, which this is not for
        raise Forbidden("An API token works only on the admin API's own routes.")
    return who


async def agent_principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> TokenClaims:
    """The desktop agent: a token minted at POST /api/v1/admin/desktops/{id}/agent-token."""
    if creds is None:
        raise Unauthorized(
            "This needs the desktop's agent token: an administrator mints it at "
            "POST /api/v1/admin/desktops/{id}/agent-token."
        )
    who = context(request).signer.verify(creds.credentials)
    if not who.is_agent or who.desktop_id is None:
        raise Forbidden("This endpoint takes a desktop agent token, not a user's token.")
    return who


def _authorized(request: Request, who: TokenClaims) -> TokenClaims:
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):  # pragma: no cover - every admin call has a route
        raise Forbidden("This operation has no permission attached to it.")
    needed = permissions.route_permission(route, request.method)
    access.authorize(context(request), who, needed)
    return who


def admin_reader(request: Request, who: Annotated[TokenClaims, Depends(principal)]) -> TokenClaims:
    """A route that only reads: needs ``<resource>:read``."""
    return _authorized(request, who)


def admin_writer(request: Request, who: Annotated[TokenClaims, Depends(principal)]) -> TokenClaims:
    """A route that changes something: needs the permission its route names (see
    ``deskbroker.api.permissions``)."""
    return _authorized(request, who)


def _query_names(dependant: Any) -> set[str]:
    names = {str(f.alias) for f in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def strict_request(request: Request) -> None:
    """Unknown query parameters are an error, like unknown body fields; NUL never passes."""
    route = request.scope.get("route")
    if isinstance(route, APIRoute):
        extra = (route.openapi_extra or {}).get("parameters", [])
        allowed = _query_names(route.dependant) | {
            str(p["name"]) for p in extra if p.get("in") == "query"
        }
        unknown = sorted(set(request.query_params) - allowed)
        if unknown:
            accepted = ", ".join(sorted(allowed)) or "no query parameters"
            raise InvalidInput(
                f"unknown query parameter {unknown[0]!r}; "
                f"{request.method} {request.url.path} accepts {accepted}"
            )
    for name, value in [*request.path_params.items(), *request.query_params.items()]:
        if "\x00" in str(value) or "\x00" in name:
            raise InvalidInput(f"{name} contains a NUL character")


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _context(request: Request) -> BrokerContext:
    return context(request)


async def _login_service(request: Request) -> LoginService:
    return login_service(request)


async def _oidc_service(request: Request) -> OidcSignIn:
    return oidc_service(request)


async def _second_factor_service(request: Request) -> SecondFactorService:
    return second_factor_service(request)


Ctx = Annotated[BrokerContext, Depends(_context)]
Login = Annotated[LoginService, Depends(_login_service)]
Oidc = Annotated[OidcSignIn, Depends(_oidc_service)]
SecondFactor = Annotated[SecondFactorService, Depends(_second_factor_service)]
Principal = Annotated[TokenClaims, Depends(principal)]
SignedPrincipal = Annotated[TokenClaims, Depends(signed_person)]
AgentPrincipal = Annotated[TokenClaims, Depends(agent_principal)]
AdminReader = Annotated[TokenClaims, Depends(admin_reader)]
AdminWriter = Annotated[TokenClaims, Depends(admin_writer)]

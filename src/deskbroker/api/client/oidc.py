"""OpenID Connect sign-in routes: the portal's redirect flow and the CLI's device flow."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field, StringConstraints

from deskbroker.api import errors
from deskbroker.api.client.routes import LoginOut, login_out
from deskbroker.api.deps import client_address
from deskbroker.api.schemas import Body
from deskbroker.errors import SignInPending
from deskbroker.services.oidc_signin import OidcSignIn

TenantName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Param = Annotated[str, StringConstraints(max_length=4096)]
# Providers add their own parameters to the callback (Keycloak's session_state, Google's
# authuser and prompt); they carry nothing the broker needs, but must not be refused.
IGNORED_CALLBACK_PARAMETERS = ("session_state", "scope", "authuser", "prompt", "hd")


class DeviceIn(Body):
    tenant: TenantName | None = None


class DeviceOut(BaseModel):
    device_handle: str = Field(description="give it to POST /api/v1/auth/oidc/device/poll")
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: int
    interval: int = Field(description="seconds between polls")
    message: str


class PollIn(Body):
    device_handle: Annotated[str, StringConstraints(min_length=1, max_length=200)]


def _service(request: Request) -> OidcSignIn:
    service: OidcSignIn = request.app.state.oidc
    return service


def router() -> APIRouter:
    r = APIRouter(tags=["client"])

    @r.get(
        "/auth/oidc/{source}/start",
        summary="Sign in at an OpenID provider (the portal's button)",
        description="Answers 302 to the provider's sign-in page, with state, nonce and a "
        "PKCE (S256) challenge; the provider sends the browser back to "
        "`/api/v1/auth/oidc/callback`. `redirect`, a path on this broker, is where the "
        "callback then sends the browser, with the token in the URL fragment.",
        status_code=302,
        response_class=RedirectResponse,
        responses={302: {"description": "to the identity provider"}},
    )
    def start(
        source: Annotated[str, StringConstraints(min_length=1, max_length=100)],
        request: Request,
        tenant: Annotated[TenantName | None, Query()] = None,
        redirect: Annotated[str | None, Query(max_length=1000)] = None,
    ) -> RedirectResponse:
        url = _service(request).start(
            tenant=tenant,
            source=source,
            return_to=redirect,
            callback_url=str(request.url_for("oidc_callback")),
        )
        return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})

    @r.get(
        "/auth/oidc/callback",
        name="oidc_callback",
        summary="Where the OpenID provider sends the browser back",
        description="Exchanges the code (with the PKCE verifier), verifies the ID token and "
        "logs the user in: the same answer as POST /api/v1/auth/login, or, when the sign-in "
        "was started with `redirect`, 303 to that page with `#token=…&expires_at=…`. "
        "A state is good once, for the source's sign_in_ttl_s.",
        response_model=LoginOut,
        responses={303: {"description": "to the portal page, the token in the fragment"}},
        openapi_extra={
            "parameters": [
                {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                for n in IGNORED_CALLBACK_PARAMETERS
            ]
        },
    )
    def callback(
        request: Request,
        state: Annotated[Param | None, Query()] = None,
        code: Annotated[Param | None, Query()] = None,
        error: Annotated[Param | None, Query()] = None,
        error_description: Annotated[Param | None, Query()] = None,
        error_uri: Annotated[Param | None, Query()] = None,
        iss: Annotated[Param | None, Query()] = None,
    ) -> LoginOut | Response:
        done = _service(request).finish(
            state=state,
            code=code,
            error=error,
            error_description=error_description,
            issuer=iss,
            client_address=client_address(request),
        )
        body = login_out(done.result)
        if done.return_to is None:
            return body
        fragment = urlencode({"token": body.token, "expires_at": body.expires_at})
        return RedirectResponse(
            f"{done.return_to}#{fragment}", status_code=303, headers={"Cache-Control": "no-store"}
        )

    @r.post(
        "/auth/oidc/{source}/device",
        summary="Start a device sign-in (the CLI)",
        description="Asks the provider for a user code (RFC 8628). Show the user the code "
        "and the verification URI, then poll POST /api/v1/auth/oidc/device/poll with the "
        "device handle every `interval` seconds.",
    )
    def device(
        source: Annotated[str, StringConstraints(min_length=1, max_length=100)],
        body: DeviceIn,
        request: Request,
    ) -> DeviceOut:
        started = _service(request).start_device(tenant=body.tenant, source=source)
        where = started.verification_uri_complete or started.verification_uri
        return DeviceOut(
            device_handle=started.device_handle,
            user_code=started.user_code,
            verification_uri=started.verification_uri,
            verification_uri_complete=started.verification_uri_complete,
            expires_in=started.expires_in,
            interval=started.interval,
            message=f"open {where} and enter the code {started.user_code}",
        )

    @r.post(
        "/auth/oidc/device/poll",
        summary="Finish a device sign-in once the user approved it",
        description="428 with `error: authorization_pending` (or `slow_down`) and a "
        "Retry-After header until the user approves at the provider; then the same answer "
        "as POST /api/v1/auth/login.",
        response_model=LoginOut,
        responses={428: {"description": "not approved yet; ask again after Retry-After"}},
    )
    def poll(body: PollIn, request: Request) -> LoginOut | Response:
        try:
            result = _service(request).poll_device(
                handle=body.device_handle, client_address=client_address(request)
            )
        except SignInPending as exc:
            response: JSONResponse = errors.problem(exc.status, exc.title, exc.detail, **exc.extra)
            response.headers["Retry-After"] = str(exc.extra.get("retry_after_s", 5))
            return response
        return login_out(result)

    return r

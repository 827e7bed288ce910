"""OpenID Connect sign-in routes: the portal's redirect flow and the CLI's device flow.

Two cookies carry the portal's sign-in, both HttpOnly (no script reads them) and Secure
when the broker is reached over https:

- ``deskbroker_oidc_browser``, set by the start, binds the sign-in to the browser that
  started it; SameSite=Lax, since the provider's redirect back to the callback is a
  cross-site navigation, which a Strict cookie would not follow.
- ``deskbroker_oidc_signin``, set by the callback, holds the one-time code that
  ``POST /auth/oidc/exchange`` turns into the token; SameSite=Strict, scoped to that path
  and good for a minute, so the code is in no URL, no history and no log.

The token itself is only ever in the exchange's response body: the API authenticates
by the Authorization header alone, so no cookie is a credential and no API route needs
a defence against cross-site requests.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field, StringConstraints

from deskbroker.api import errors
from deskbroker.api.client.routes import LoginOut, login_out
from deskbroker.api.deps import Oidc, client_address
from deskbroker.api.schemas import Body
from deskbroker.errors import SignInPending
from deskbroker.services.oidc_signin import HANDOFF_TTL_S, browser_secret

BROWSER_COOKIE = "deskbroker_oidc_browser"
HANDOFF_COOKIE = "deskbroker_oidc_signin"
# The longest a started sign-in may take (sign_in_ttl_s is at most an hour).
BROWSER_COOKIE_AGE_S = 3600
NO_STORE = {"Cache-Control": "no-store"}

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


def _cookie_path(request: Request, tail: str) -> str:
    # Behind a proxy that mounts the broker under a prefix, the browser sees the prefix.
    return f"{request.scope.get('root_path', '')}/api/v1/auth/oidc/{tail}"


def router() -> APIRouter:
    r = APIRouter(tags=["client"])

    @r.get(
        "/auth/oidc/{source}/start",
        summary="Sign in at an OpenID provider (the portal's button)",
        description="Answers 302 to the provider's sign-in page, with state, nonce and a "
        "PKCE (S256) challenge, and sets the `deskbroker_oidc_browser` cookie that binds "
        "the sign-in to this browser; the provider sends the browser back to "
        "`/api/v1/auth/oidc/callback`. `redirect` is the portal page the callback then "
        "sends the browser to: a path under one of the broker's `oidc_portal_paths` "
        "(default `/portal/`, also the default page), never under `/api/`. 429 with "
        "Retry-After when the client address started too many sign-ins.",
        status_code=302,
        response_class=RedirectResponse,
        responses={302: {"description": "to the identity provider"}},
    )
    def start(
        source: Annotated[str, StringConstraints(min_length=1, max_length=100)],
        request: Request,
        service: Oidc,
        tenant: Annotated[TenantName | None, Query()] = None,
        redirect: Annotated[str | None, Query(max_length=1000)] = None,
    ) -> RedirectResponse:
        browser = browser_secret(request.cookies.get(BROWSER_COOKIE))
        started = service.start(
            tenant=tenant,
            source=source,
            return_to=redirect,
            callback_url=str(request.url_for("oidc_callback")),
            browser=browser,
            client_address=client_address(request),
        )
        response = RedirectResponse(started.url, status_code=302, headers=NO_STORE)
        response.set_cookie(
            BROWSER_COOKIE,
            browser,
            max_age=BROWSER_COOKIE_AGE_S,
            path=_cookie_path(request, ""),
            secure=started.callback.startswith("https:"),
            httponly=True,
            samesite="lax",
        )
        return response

    @r.get(
        "/auth/oidc/callback",
        name="oidc_callback",
        summary="Where the OpenID provider sends the browser back",
        description="Checks that the browser is the one that started the sign-in (its "
        "`deskbroker_oidc_browser` cookie), exchanges the code (with the PKCE verifier), "
        "verifies the ID token and logs the user in; then 303 to the portal page, setting "
        "the `deskbroker_oidc_signin` cookie (a one-time code) that the page redeems at "
        "POST /api/v1/auth/oidc/exchange. No token is in any URL. A state is good once, "
        "for the source's sign_in_ttl_s.",
        status_code=303,
        response_class=RedirectResponse,
        responses={303: {"description": "to the portal page, which redeems the sign-in"}},
        openapi_extra={
            "parameters": [
                {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                for n in IGNORED_CALLBACK_PARAMETERS
            ]
        },
    )
    def callback(
        request: Request,
        service: Oidc,
        state: Annotated[Param | None, Query()] = None,
        code: Annotated[Param | None, Query()] = None,
        error: Annotated[Param | None, Query()] = None,
        error_description: Annotated[Param | None, Query()] = None,
        error_uri: Annotated[Param | None, Query()] = None,
        iss: Annotated[Param | None, Query()] = None,
    ) -> RedirectResponse:
        done = service.finish(
            state=state,
            code=code,
            error=error,
            error_description=error_description,
            issuer=iss,
            client_address=client_address(request),
            browser=request.cookies.get(BROWSER_COOKIE),
        )
        handoff = service.hand_off(done, login_out(done.result).model_dump_json())
        response = RedirectResponse(done.return_to, status_code=303, headers=NO_STORE)
        response.set_cookie(
            HANDOFF_COOKIE,
            handoff,
            max_age=HANDOFF_TTL_S,
            path=_cookie_path(request, "exchange"),
            secure=done.https,
            httponly=True,
            samesite="strict",
        )
        return response

    @r.post(
        "/auth/oidc/exchange",
        summary="Redeem a finished portal sign-in for the token",
        description="The portal page the callback sent the browser to calls this (same "
        "origin, cookies included): the one-time code in the `deskbroker_oidc_signin` "
        "cookie becomes the same answer as POST /api/v1/auth/login. Good once, on any "
        "broker of the cluster, for a minute after the callback; the answer clears the "
        "cookie.",
        response_model=LoginOut,
    )
    def exchange(request: Request, service: Oidc) -> Response:
        answer = service.redeem(request.cookies.get(HANDOFF_COOKIE))
        response = Response(answer, media_type="application/json", headers=NO_STORE)
        response.delete_cookie(
            HANDOFF_COOKIE,
            path=_cookie_path(request, "exchange"),
            httponly=True,
            samesite="strict",
        )
        return response

    @r.post(
        "/auth/oidc/{source}/device",
        summary="Start a device sign-in (the CLI)",
        description="Asks the provider for a user code (RFC 8628). Show the user the code "
        "and the verification URI, then poll POST /api/v1/auth/oidc/device/poll with the "
        "device handle every `interval` seconds. 429 with Retry-After when the client "
        "address started too many sign-ins.",
    )
    def device(
        source: Annotated[str, StringConstraints(min_length=1, max_length=100)],
        body: DeviceIn,
        request: Request,
        service: Oidc,
    ) -> DeviceOut:
        started = service.start_device(
            tenant=body.tenant, source=source, client_address=client_address(request)
        )
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
    def poll(body: PollIn, request: Request, service: Oidc) -> LoginOut | Response:
        try:
            result = service.poll_device(
                handle=body.device_handle, client_address=client_address(request)
            )
        except SignInPending as exc:
            response: JSONResponse = errors.problem(exc.status, exc.title, exc.detail, **exc.extra)
            response.headers["Retry-After"] = str(exc.extra.get("retry_after_s", 5))
            return response
        return login_out(result)

    return r

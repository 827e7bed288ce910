"""Client routes: what a user, the portal and the ``deskbroker connect`` CLI call."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints

from deskbroker.api.client.challenge import SecondFactorOut, challenge_answer
from deskbroker.api.deps import Ctx, Login, Principal, SignedPrincipal, client_address
from deskbroker.api.schemas import Body
from deskbroker.domain.states import PowerAction
from deskbroker.protocols.descriptors import ClientKind, ConnectionDescriptor
from deskbroker.services import client_desktops, desktops, power
from deskbroker.services.challenges import Challenge
from deskbroker.services.client_desktops import HeldDesktop
from deskbroker.services.login import LoginResult, Offer

# Long enough for any real password, short enough that nobody hashes a megabyte.
Password = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class LoginIn(Body):
    username: Annotated[str, StringConstraints(min_length=1, max_length=256, strip_whitespace=True)]
    password: Password
    tenant: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    source: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None


class DesktopOut(BaseModel):
    id: str
    name: str
    address: str
    power_state: str
    pool_id: str | None
    power_actions: list[str] = Field(
        default_factory=list,
        description="what your policy lets you do to its power (start, stop, reboot) at "
        "POST /api/v1/client/desktops/{id}/power",
    )


class UserPowerIn(Body):
    action: Literal["start", "stop", "reboot"]


class UserPowerOut(BaseModel):
    desktop_id: str
    action: str
    was: str = Field(description="the power state before")
    power_state: str = Field(description="the power state the action leads to")


class OfferOut(BaseModel):
    pool_id: str
    pool_name: str
    status: str
    desktop: DesktopOut | None = None
    position: int | None = None
    estimate_s: int | None = None
    message: str


class LoginOut(BaseModel):
    token: str
    token_type: str = "bearer"
    expires_at: int
    user_id: str
    username: str
    tenant_id: str
    role: str
    offers: list[OfferOut]


ProtocolText = Annotated[str, StringConstraints(min_length=1, max_length=20)]


class ConnectIn(Body):
    protocol: ProtocolText | None = Field(
        default=None, description="a protocol of the desktop's plan; without it the plan chooses"
    )
    client: ClientKind | None = Field(
        default=None,
        description="browser (the plan's first HTML5 protocol) or native (the first the "
        "client has a viewer for); without it the plan's first protocol",
    )
    accepts: list[ProtocolText] | None = Field(
        default=None,
        max_length=20,
        description="with client native: the protocols the client can launch a viewer for",
    )


class DescriptorOut(BaseModel):
    desktop_id: str
    desktop_name: str
    protocol: str
    host: str
    port: int
    uri: str
    filename: str
    media_type: str
    content: str
    route: Literal["direct", "gateway"] = Field(
        default="direct",
        description="direct: the viewer reaches the desktop itself; gateway: host and port "
        "are the gateway's (a port forward, or an HTML5 page)",
    )
    launch_url: str | None = Field(
        default=None,
        description="an HTML5 protocol's viewer page on the gateway, its single-use ticket in "
        "the fragment: open it in the browser before ticket_expires_at",
    )
    ticket_expires_at: int | None = Field(
        default=None,
        description="unix time after which the gateway refuses this connection's ticket",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="the plan's settings for this protocol, defaults filled in (what an "
        "HTML5 page or a client shaping the connection itself needs)",
    )


class StartingOut(BaseModel):
    """A stopped or suspended desktop is being started for its user."""

    status: Literal["starting"] = "starting"
    desktop_id: str
    desktop_name: str
    power_state: str
    estimate_s: int = Field(description="seconds until the desktop should be running")
    retry_after_s: int = Field(description="ask again after this many seconds")
    message: str


def _starting(result: desktops.Starting) -> JSONResponse:
    body = StartingOut(
        desktop_id=result.desktop_id,
        desktop_name=result.desktop_name,
        power_state=result.power_state,
        estimate_s=result.estimate_s,
        retry_after_s=result.retry_after_s,
        message=result.message,
    )
    return JSONResponse(
        body.model_dump(), status_code=202, headers={"Retry-After": str(result.retry_after_s)}
    )


def _desktop(d: HeldDesktop) -> DesktopOut:
    return DesktopOut(
        id=d.id, name=d.name, address=d.address, power_state=d.power_state, pool_id=d.pool_id
    )


def _offer(o: Offer) -> OfferOut:
    if o.status == "assigned" and o.desktop is not None:
        message = f"desktop {o.desktop.name} is yours"
    else:
        minutes = max(1, round((o.estimate_s or 0) / 60))
        message = (
            f"all desktops in {o.pool_name} are in use; you are number {o.position} in the "
            f"queue, about {minutes} minute{'s' if minutes != 1 else ''}"
        )
    return OfferOut(
        pool_id=o.pool_id,
        pool_name=o.pool_name,
        status=o.status,
        desktop=_desktop(o.desktop) if o.desktop else None,
        position=o.position,
        estimate_s=o.estimate_s,
        message=message,
    )


def login_out(result: LoginResult) -> LoginOut:
    """The answer to every kind of login: password, OpenID Connect, device flow."""
    return LoginOut(
        token=result.token,
        expires_at=result.expires_at,
        user_id=result.user_id,
        username=result.username,
        tenant_id=result.tenant_id,
        role=result.role,
        offers=[_offer(o) for o in result.offers],
    )


def _descriptor(result: desktops.ConnectResult) -> DescriptorOut:
    d: ConnectionDescriptor = result.descriptor
    return DescriptorOut(
        desktop_id=result.desktop_id,
        desktop_name=result.desktop_name,
        protocol=d.protocol,
        host=d.host,
        port=d.port,
        uri=d.uri,
        filename=d.filename,
        media_type=d.media_type,
        content=d.content,
        route=result.route,
        launch_url=result.launch_url,
        ticket_expires_at=result.ticket_expires_at,
        options=dict(d.options),
    )


def router() -> APIRouter:
    r = APIRouter()

    @r.post(
        "/auth/login",
        tags=["client"],
        summary="Log in: a token, and your desktops",
        description="When the identity source asks for a second factor, the answer is 202 "
        "with `status: second_factor_needed` and a challenge instead of the token: complete "
        "the login at POST /api/v1/auth/login/totp.",
        response_model=LoginOut,
        responses={
            202: {"model": SecondFactorOut, "description": "a one-time code is due"},
            429: {
                "description": "too many failed attempts (the account or the address is "
                "locked for a while), or the account completed more than "
                "DESKBROKER_USER_SIGN_INS_PER_MINUTE times in the last minute; Retry-After "
                "says when to try again"
            },
        },
    )
    def login(body: LoginIn, request: Request, ctx: Ctx, service: Login) -> LoginOut | Response:
        result = service.login(
            body.username,
            body.password,
            tenant=body.tenant,
            source=body.source,
            client_address=client_address(request),
        )
        if isinstance(result, Challenge):
            return challenge_answer(result)
        return login_out(result)

    @r.post(
        "/auth/logout",
        tags=["client"],
        status_code=204,
        summary="Log out: every session token of yours stops working",
        description="Revokes all of the caller's session tokens (on every device); API "
        "tokens are revoked one by one at DELETE /api/v1/admin/api-tokens/{id}.",
    )
    def logout(ctx: Ctx, who: Principal) -> Response:
        client_desktops.logout(ctx, who)
        return Response(status_code=204)

    @r.get("/client/me", tags=["client"], summary="Who the token belongs to")
    def me(who: Principal) -> dict[str, Any]:
        return {
            "user_id": who.user_id,
            "username": who.username,
            "tenant_id": who.tenant_id,
            "role": who.role,
            "expires_at": who.expires_at,
        }

    @r.get("/client/desktops", tags=["client"], summary="Your desktops and queue places")
    def my_desktops(ctx: Ctx, who: SignedPrincipal) -> dict[str, Any]:
        # The user row is checked in the listing's own read (one transaction, not two).
        mine = client_desktops.my_desktops(ctx, who)
        held = []
        for d in mine.held:
            out = _desktop(d)
            out.power_actions = power.user_actions(ctx, who, d.pool_id)
            held.append(out.model_dump())
        return {
            "desktops": held,
            "queue": [_offer(o).model_dump() for o in mine.queue],
        }

    @r.post(
        "/client/desktops/{desktop_id}/connect",
        tags=["client"],
        summary="A connection descriptor for one of your desktops",
        description="A running desktop gives 200 and its descriptor. A stopped or suspended "
        "one is started for you: 202 with `status: starting`, an estimate and a Retry-After "
        "header; ask again and get the descriptor once it runs.",
        response_model=DescriptorOut,
        responses={
            202: {"model": StartingOut, "description": "the desktop is starting"},
            429: {
                "description": "you asked to connect more than "
                "DESKBROKER_USER_CONNECTS_PER_MINUTE times in the last minute; nothing was "
                "recorded, and Retry-After says when to ask again"
            },
        },
    )
    def connect(
        desktop_id: str, body: ConnectIn, request: Request, ctx: Ctx, who: SignedPrincipal
    ) -> DescriptorOut | Response:
        # The user row is checked in the connect's own first statement (its budget).
        result = desktops.connect(
            ctx,
            who,
            desktop_id,
            body.protocol,
            client_address(request),
            client_kind=body.client,
            accepts=body.accepts,
        )
        if isinstance(result, desktops.Starting):
            return _starting(result)
        return _descriptor(result)

    @r.get(
        "/client/desktops/{desktop_id}/descriptor",
        tags=["client"],
        summary="The descriptor as a file (.rdp, .vnc) for a native viewer",
        responses={202: {"model": StartingOut, "description": "the desktop is starting"}},
    )
    def descriptor_file(
        desktop_id: str,
        request: Request,
        ctx: Ctx,
        who: SignedPrincipal,
        protocol: str | None = Query(None, max_length=20),
    ) -> Response:
        # The user row is checked in the connect's own first statement.
        result = desktops.connect(ctx, who, desktop_id, protocol, client_address(request))
        if isinstance(result, desktops.Starting):
            return _starting(result)
        d = result.descriptor
        return Response(
            content=d.content,
            media_type=d.media_type,
            headers={"Content-Disposition": f'attachment; filename="{d.filename}"'},
        )

    @r.post(
        "/client/desktops/{desktop_id}/power",
        tags=["client"],
        summary="Start, stop or reboot a desktop you hold, where your policy allows it",
        description="The actions allowed are the desktop's `power_actions` in GET "
        "/api/v1/client/desktops (the policy entry's `user_power_actions`). Stopping or "
        "rebooting ends your own session on it; a desktop with somebody else's session in "
        "use is refused (409).",
        responses={
            403: {"description": "your policy does not allow this action"},
            404: {"description": "not a desktop you hold"},
            409: {"description": "the desktop's state does not allow it now"},
        },
    )
    def power_desktop(desktop_id: str, body: UserPowerIn, ctx: Ctx, who: Principal) -> UserPowerOut:
        done = power.user_power(ctx, who, desktop_id, PowerAction(body.action))
        return UserPowerOut(
            desktop_id=done.desktop_id,
            action=done.action,
            was=done.was,
            power_state=done.power_state,
        )

    @r.post(
        "/client/desktops/{desktop_id}/release",
        tags=["client"],
        status_code=204,
        summary="Give a desktop back",
    )
    def release(desktop_id: str, ctx: Ctx, who: Principal) -> Response:
        client_desktops.release(ctx, who, desktop_id)
        return Response(status_code=204)

    return r

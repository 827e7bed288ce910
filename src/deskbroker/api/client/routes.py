"""Client routes: what a user, the portal and the ``deskbroker connect`` CLI call."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy import select

from deskbroker.api.client.challenge import SecondFactorOut, challenge_answer
from deskbroker.api.deps import Ctx, Principal, SignedPrincipal, client_address
from deskbroker.api.schemas import Body
from deskbroker.domain.offers import queue_estimate_s
from deskbroker.protocols.descriptors import ConnectionDescriptor
from deskbroker.services import access, desktops
from deskbroker.services.challenges import Challenge
from deskbroker.services.login import LoginResult, LoginService, Offer
from deskbroker.store import claims, events
from deskbroker.store.claims import HeldDesktop
from deskbroker.store.tables import Pool

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


class ConnectIn(Body):
    protocol: Annotated[str, StringConstraints(min_length=1, max_length=20)] | None = None


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
        responses={202: {"model": SecondFactorOut, "description": "a one-time code is due"}},
    )
    def login(body: LoginIn, request: Request, ctx: Ctx) -> LoginOut | Response:
        service: LoginService = request.app.state.login
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
        with ctx.db.write() as session:
            access.revoke_tokens(session, who.user_id)
            events.append(
                session,
                "logout",
                tenant_id=who.tenant_id,
                actor=who.username,
                user_id=who.user_id,
                detail={},
            )
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
    def my_desktops(ctx: Ctx, who: Principal) -> dict[str, Any]:
        with ctx.db.read() as session:
            held = claims.held_desktops(session, who.user_id)
            waiting = claims.queue_positions(session, who.user_id)
            names = (
                dict(
                    session.execute(
                        select(Pool.id, Pool.name).where(Pool.id.in_([p for p, _ in waiting]))
                    ).all()
                )
                if waiting
                else {}
            )
        view = ctx.cache.current(ctx.db)
        queue = []
        for pool_id, position in waiting:
            pool = view.pools.get(pool_id)
            offer = Offer(
                pool_id,
                names.get(pool_id, ""),
                "queued",
                None,
                position,
                queue_estimate_s(position, pool.release_interval_s if pool else None),
            )
            queue.append(_offer(offer).model_dump())
        return {"desktops": [_desktop(d).model_dump() for d in held], "queue": queue}

    @r.post(
        "/client/desktops/{desktop_id}/connect",
        tags=["client"],
        summary="A connection descriptor for one of your desktops",
        description="A running desktop gives 200 and its descriptor. A stopped or suspended "
        "one is started for you: 202 with `status: starting`, an estimate and a Retry-After "
        "header; ask again and get the descriptor once it runs.",
        response_model=DescriptorOut,
        responses={202: {"model": StartingOut, "description": "the desktop is starting"}},
    )
    def connect(
        desktop_id: str, body: ConnectIn, request: Request, ctx: Ctx, who: SignedPrincipal
    ) -> DescriptorOut | Response:
        # The user row is checked in the connect's own first statement (its budget).
        result = desktops.connect(ctx, who, desktop_id, body.protocol, client_address(request))
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
        "/client/desktops/{desktop_id}/release",
        tags=["client"],
        status_code=204,
        summary="Give a desktop back",
    )
    def release(desktop_id: str, ctx: Ctx, who: Principal) -> Response:
        with ctx.db.write() as session:
            desktops.release(
                session,
                desktop_id=desktop_id,
                tenant_id=who.tenant_id,
                user_id=who.user_id,
                actor=who.username,
            )
        return Response(status_code=204)

    return r

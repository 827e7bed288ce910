"""The gateway's HTTP side: viewer pages, WebSocket relays, forward redemption, drain."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from deskbroker.domain.tickets import Ticket, report_key, sign
from deskbroker.errors import Conflict, DeskbrokerError
from deskbroker.gateway import guac, relay, ssh
from deskbroker.gateway.accounting import SIGNATURE_HEADER
from deskbroker.gateway.forward import Forwarder
from deskbroker.gateway.protocols import NATIVE
from deskbroker.gateway.settings import GatewaySettings
from deskbroker.gateway.state import GatewayState

log = logging.getLogger("deskbroker.gateway")

PAGES = Path(__file__).parent / "pages"
# The pages load scripts, styles and fonts from the gateway itself only; the WebSocket
# goes back to the same host. xterm.js sets its theme through a <style> element, hence
# 'unsafe-inline' for styles (never for scripts).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# How far a signed control request's time may be from the gateway's clock.
SIGNED_WINDOW_S = 300
# WebSocket close codes the pages explain to the user (4000-4999 are the application's).
CLOSE_REFUSED = 4403
CLOSE_UNAVAILABLE = 4503


class SecurityHeaders:
    """Adds the CSP and friends to every HTTP answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def _problem(exc: DeskbrokerError) -> JSONResponse:
    return JSONResponse(
        {"title": exc.title, "status": exc.status, "detail": exc.detail},
        status_code=exc.status,
        media_type="application/problem+json",
    )


def signed_ok(secret: str, header: str, body: bytes, now: int) -> bool:
    """True when ``header`` is this gateway key's signature of ``body``, made recently."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    stamp = fields.get("t", "")
    if not stamp.isdigit() or abs(now - int(stamp)) > SIGNED_WINDOW_S:
        return False
    expected = sign(report_key(secret), stamp.encode() + b"." + body)
    return hmac.compare_digest(expected, fields.get("sig", ""))


WsHandler = Callable[[WebSocket], Awaitable[None]]


async def _refuse_denied(ticket: Ticket, timeout_s: float) -> None:
    """A port forward to a desktop the outbound policy denies is never opened (the
    connection through it would be refused anyway); a name that does not resolve yet
    is left to the connection, as before."""
    try:
        await asyncio.wait_for(relay.checked_address(ticket), timeout_s)
    except relay.TargetDenied as exc:
        raise Conflict(str(exc)) from exc
    except OSError:
        return


def create_app(settings: GatewaySettings) -> Starlette:
    """The gateway's ASGI application; its state lives on ``app.state.gateway``."""
    state = GatewayState(settings)
    forwarder = Forwarder(state)

    def websocket(protocol: str, run: Callable[..., Awaitable[None]]) -> WsHandler:
        async def endpoint(ws: WebSocket) -> None:
            subprotocols = ws.scope.get("subprotocols") or []
            await ws.accept("guacamole" if "guacamole" in subprotocols else None)
            client = ws.client.host if ws.client else None
            try:
                ticket = state.admit(
                    ws.query_params.get("ticket", ""), protocols=(protocol,), client=None
                )
            except DeskbrokerError as exc:
                log.info("websocket from %s refused: %s", client, exc.detail)
                code = CLOSE_UNAVAILABLE if exc.status == 503 else CLOSE_REFUSED
                await ws.close(code=code, reason=exc.detail[:120])
                return
            with state.metered(ticket, protocol) as meter:
                try:
                    await run(ws, ticket, meter)
                except OSError as exc:
                    await ws.close(code=CLOSE_UNAVAILABLE, reason=str(exc)[:120])
                    return
                except guac.GuacError as exc:
                    await ws.close(code=CLOSE_UNAVAILABLE, reason=f"guacd: {exc}"[:120])
                    return
            if ws.client_state.name != "DISCONNECTED":
                with contextlib.suppress(RuntimeError):
                    await ws.close()

        return endpoint

    timeout = settings.connect_timeout_s

    async def run_vnc(ws: WebSocket, ticket: object, meter: object) -> None:
        await relay.relay(ws, ticket, meter, timeout)  # type: ignore[arg-type]

    async def run_ssh(ws: WebSocket, ticket: object, meter: object) -> None:
        def learned(key: str) -> None:
            # The broker pins the key it let this gateway learn (a signed report).
            state.reporter.submit({**meter.report("gateway.hostkey"), "host_key": key})  # type: ignore[attr-defined]

        await ssh.bridge(ws, ticket, meter, timeout, settings.ssh_known_hosts, learned)  # type: ignore[arg-type]

    async def run_rdp(ws: WebSocket, ticket: object, meter: object) -> None:
        address = settings.guacd_address
        if address is None:
            raise OSError("HTML5 RDP is not set up on this gateway (no guacd configured)")
        # guac.tunnel checks the policy and hands guacd the checked address (TargetDenied
        # is an OSError).
        await guac.tunnel(ws, ticket, meter, address, timeout)  # type: ignore[arg-type]

    async def healthz(request: Request) -> Response:
        body = {
            "status": "draining" if state.draining else "ok",
            "connections": len(state.meters),
            "forwards": len(forwarder.forwards),
        }
        return JSONResponse(body, status_code=503 if state.draining else 200)

    async def forwards(request: Request) -> Response:
        body = await request.body()
        try:
            ticket_text = json.loads(body or b"{}").get("ticket", "")
        except (ValueError, AttributeError):
            ticket_text = ""
        if not isinstance(ticket_text, str):
            ticket_text = ""
        try:
            ticket = state.admit(ticket_text, protocols=NATIVE)
            await _refuse_denied(ticket, settings.connect_timeout_s)
            forward = await forwarder.open(ticket)
        except DeskbrokerError as exc:
            return _problem(exc)
        return JSONResponse(
            {"port": forward.port, "expires_at": ticket.expires_at}, status_code=201
        )

    async def drain(request: Request) -> Response:
        body = await request.body()
        if not signed_ok(
            settings.key, request.headers.get(SIGNATURE_HEADER, ""), body, int(time.time())
        ):
            return JSONResponse(
                {
                    "title": "Not authenticated",
                    "status": 401,
                    "detail": "a drain request must be signed with the gateway key",
                },
                status_code=401,
                media_type="application/problem+json",
            )
        state.drain()
        return JSONResponse({"status": "draining", "connections": len(state.meters)})

    async def page_missing(request: Request) -> Response:
        return JSONResponse(
            {
                "title": "Viewer assets missing",
                "status": 503,
                "detail": "the HTML5 viewers are not built into this installation; run "
                "`make viewer-assets` (make setup does)",
            },
            status_code=503,
            media_type="application/problem+json",
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.reporter.start()
        try:
            yield
        finally:
            await forwarder.close()
            await state.reporter.stop()

    built = (PAGES / "vendor").is_dir()
    routes = [
        Route("/healthz", healthz),
        Route("/forwards", forwards, methods=["POST"]),
        Route("/drain", drain, methods=["POST"]),
        WebSocketRoute("/ws/vnc", websocket("html5-vnc", run_vnc)),
        WebSocketRoute("/ws/ssh", websocket("html5-ssh", run_ssh)),
        WebSocketRoute("/ws/rdp", websocket("html5-rdp", run_rdp)),
        Mount("/viewer", StaticFiles(directory=PAGES))
        if built
        else Route("/viewer/{rest:path}", page_missing),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = state
    app.state.forwarder = forwarder
    app.add_middleware(SecurityHeaders)
    return app

"""The FastAPI application: routers, error rendering, limits, health and metrics."""

from __future__ import annotations

import logging
from functools import cache
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deskbroker import __version__, metrics
from deskbroker.api import agent, edge, errors, gateway, permissions, web
from deskbroker.api.admin import access as admin_access
from deskbroker.api.admin import actions as admin_actions
from deskbroker.api.admin import (
    activity,
    identity,
    inventory,
    policies,
    pool_history,
    pools,
    rollouts,
)
from deskbroker.api.admin import catalog as admin_catalog
from deskbroker.api.admin import config as admin_config
from deskbroker.api.admin import drain as admin_drain
from deskbroker.api.admin import engine as admin_engine
from deskbroker.api.admin import enrolments as admin_enrolments
from deskbroker.api.admin import explain as admin_explain
from deskbroker.api.admin import quotas as admin_quotas
from deskbroker.api.admin import removal as admin_removal
from deskbroker.api.admin import sessions as admin_sessions
from deskbroker.api.admin import webhooks as admin_webhooks
from deskbroker.api.client import grants as client_grants
from deskbroker.api.client import oidc as client_oidc
from deskbroker.api.client import plans as client_plans
from deskbroker.api.client import routes as client_routes
from deskbroker.api.client import second_factor as client_second_factor
from deskbroker.api.client import sign_in as client_sign_in
from deskbroker.api.deps import strict_request
from deskbroker.api.edge import ForwardedFor, SecurityHeaders
from deskbroker.api.overload import InFlightLimit
from deskbroker.services import database_health
from deskbroker.services.context import BrokerContext
from deskbroker.services.sign_in_services import SignInServices

MAX_BODY_BYTES = 1024 * 1024
OPENAPI_URL = "/api/v1/openapi.json"
metrics_bearer = HTTPBearer(
    auto_error=False, scheme_name="metricsToken", description="the setting metrics_token"
)

log = logging.getLogger("deskbroker.api")


class BodyLimit:
    """Refuses bodies over the limit before anything parses them."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # An HTTP exception passes through FastAPI's body parsing untouched
                    # and is rendered by the problem handler.
                    raise StarletteHTTPException(413, self.message)
            return message

        await self.app(scope, limited, send)

    @property
    def message(self) -> str:
        return f"request bodies are limited to {self.limit // 1024} KiB"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = errors.problem(413, "Payload too large", self.message)
        await response(scope, receive, send)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class StatusCounter:
    """Counts responses by status class for /metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The counter of each method and status class, looked up once: prometheus'
        # ``labels`` (a lock, a key built from the names) cost a measurable share of
        # every request's time in the event loop.
        self._counters: dict[tuple[str, int], Any] = {}

    def _counter(self, method: str, status: int) -> Any:
        # A client names the method: any other than HTTP's own is counted as one, so
        # made-up methods cannot grow the metrics (or this map) without end.
        key = (method if method in _METHODS else "OTHER", status // 100)
        found = self._counters.get(key)
        if found is None:
            found = metrics.HTTP_REQUESTS.labels(method=key[0], status=f"{key[1]}xx")
            self._counters[key] = found
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._counter(scope["method"], message["status"]).inc()
            await send(message)

        await self.app(scope, receive, counting)


@cache
def api_router() -> APIRouter:
    """Every /api/v1 route. The routes find the broker through the dependencies of
    ``api/deps.py`` (which read ``request.app.state``), so
    one router serves every app of the process and is built once (it is not cheap)."""
    api = APIRouter(prefix="/api/v1", dependencies=[Depends(strict_request)])
    api.include_router(client_routes.router())
    api.include_router(client_oidc.router())
    api.include_router(client_second_factor.router())
    api.include_router(client_grants.router())
    api.include_router(client_sign_in.router())
    api.include_router(client_plans.router())
    # Routes are matched one by one in this order: the agents' and the gateway's, called
    # on every session and connection, come before the administrators' many.
    api.include_router(agent.router())
    api.include_router(gateway.router())
    # One level of nesting fewer: every level rebuilds each route's dependencies.
    for module in (
        inventory,
        pools,
        policies,
        identity,
        activity,
        admin_sessions,
        admin_engine,
        admin_catalog,
        admin_access,
        admin_actions,
        admin_drain,
        admin_removal,
        admin_explain,
        admin_quotas,
        pool_history,
        rollouts,
        admin_enrolments,
        admin_config,
        admin_webhooks,
    ):
        api.include_router(module.router(), prefix="/admin")
    return api


permissions.read_catalog_from(api_router)


def _not_ready(detail: str) -> JSONResponse:
    answer = errors.problem(503, "Not ready", detail)
    answer.headers["Retry-After"] = "5"
    return answer


def create_app(ctx: BrokerContext) -> FastAPI:
    app = FastAPI(
        title="deskbroker",
        version=__version__,
        description="An open, vendor-neutral connection broker for virtual desktops.",
        openapi_url=OPENAPI_URL,
        docs_url=None,  # served by api.web from the package, not from a CDN
        redoc_url=None,
    )
    # Read back by the dependencies of api/deps.py only: routers never touch app.state.
    app.state.ctx = ctx
    app.state.sign_in = SignInServices.build(ctx)
    errors.install(app)

    app.include_router(api_router())

    @app.get("/healthz", tags=["health"], summary="The process is alive")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="The database answers and is migrated, and the engine is not stuck",
    )
    def readyz() -> JSONResponse:
        try:
            revision = database_health.schema_revision(ctx.db)
        except Exception:
            # The driver's text names hosts, users and paths: it goes to the log only.
            log.exception("readiness check: the database did not answer")
            return _not_ready("the database is unreachable")
        if revision is None:
            return _not_ready("the database has no schema: run deskbroker db upgrade")
        stalled = ctx.pulse.stalled_for()
        if stalled is not None:
            return _not_ready(
                f"the background engine is stuck: its last tick was {stalled:.0f} seconds ago"
            )
        saturated = ctx.pulse.saturated_for()
        if saturated is not None:
            busy_s, workers = saturated
            return _not_ready(
                f"every one of the {workers} background engine workers has been busy for "
                f"{busy_s:.0f} seconds (waiting on clouds that do not answer, most likely): "
                "builds, timers and retention wait for all tenants"
            )
        return JSONResponse({"status": "ready", "schema": revision})

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics (needs the metrics token)")
    def prometheus(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(metrics_bearer)],
    ) -> Response:
        edge.check_metrics_token(ctx.settings.metrics_token, creds.credentials if creds else None)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    # The portal, the console and the API docs page, from the installed package.
    app.include_router(web.router())

    plain_openapi = app.openapi

    def openapi_with_permissions() -> dict[str, Any]:
        # Each admin operation shows the permission it needs, as roles are written in.
        document = plain_openapi()
        for path, operations in document.get("paths", {}).items():
            if path.startswith(permissions.ADMIN_PREFIX):
                for method, operation in operations.items():
                    operation.setdefault(
                        permissions.PERMISSION_KEY,
                        permissions.required(path, method.upper(), operation),
                    )
        return document

    app.openapi = openapi_with_permissions  # type: ignore[method-assign]
    app.add_middleware(BodyLimit)
    # Outside the body limit, inside the headers and the status count: a shed request
    # is answered like any other and counted as a 5xx.
    app.add_middleware(InFlightLimit, limit=ctx.settings.max_requests_in_flight)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(StatusCounter)
    # Outermost: everything inside sees the client's address, not the proxy's.
    app.add_middleware(ForwardedFor, proxies=ctx.settings.proxy_networks)
    return app

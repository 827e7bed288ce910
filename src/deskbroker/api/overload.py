"""Overload answered in words: past its limit of requests at once, a worker answers 503
with Retry-After at once instead of queueing requests until their clients give up and
drop the connection."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from deskbroker import metrics
from deskbroker.api import errors

# Liveness must answer under load: an orchestrator that sees it fail restarts a node
# that is merely busy. An event stream holds its place for minutes: it has places of its
# own (api/stream_slots.py), so that streams cannot take every login's.
EXEMPT = frozenset({"/healthz", "/api/v1/admin/event-stream"})
RETRY_AFTER_S = 1


class InFlightLimit:
    """Serves at most ``limit`` requests at once in this worker; the next ones get a 503
    problem with ``Retry-After``.

    The count runs on the event loop (the ASGI calls are made there, whatever thread a
    route then runs on), so a plain integer is enough. A request counts from its headers
    to its last response byte: one whose client drips its body holds its place."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            metrics.HTTP_SHED.inc()
            answer = errors.problem(
                503,
                "Service unavailable",
                f"this broker is already serving its limit of {self.limit} requests at once; "
                f"try again in {RETRY_AFTER_S} second (or on another broker of the cluster)",
            )
            answer.headers["Retry-After"] = str(RETRY_AFTER_S)
            await answer(scope, receive, send)
            return
        self.in_flight += 1
        metrics.HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            metrics.HTTP_IN_FLIGHT.dec()

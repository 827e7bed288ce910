"""Which permission each admin operation needs, read off the route itself.

The resource is the path's first segment after ``/api/v1/admin/``; the action is
``read`` for a route that only reads (it depends on ``AdminReader``), else ``create``
(POST on the collection), ``update`` (PATCH/PUT on an item), ``delete``, or the verb that
ends an operation's path (``POST /desktops/{id}/power`` needs ``desktops:power``). A
route may name its own with ``openapi_extra={"x-permission": "resource:action"}``. The
catalog of every resource and action is built from the routes, so a new endpoint is
covered, listed and grantable without a table to keep in step.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from fastapi.routing import APIRoute

ADMIN_PREFIX = "/api/v1/admin/"
PERMISSION_KEY = "x-permission"


def required(path: str, method: str, reading: bool, extra: dict[str, Any] | None) -> str:
    """The ``resource:action`` an admin route needs."""
    named = (extra or {}).get(PERMISSION_KEY)
    if named:
        return str(named)
    segments = [s for s in path.removeprefix(ADMIN_PREFIX).split("/") if s]
    resource = segments[0] if segments else "admin"
    if reading or method == "GET":
        return f"{resource}:read"
    tail = segments[-1] if len(segments) > 1 else ""
    if tail and not tail.startswith("{"):
        return f"{resource}:{tail}"
    if method == "POST" and len(segments) == 1:
        return f"{resource}:create"
    if method == "DELETE":
        return f"{resource}:delete"
    return f"{resource}:update"


def route_permission(route: APIRoute) -> str:
    """The permission a mounted admin route needs (its dependencies tell read or write)."""
    cached: str | None = getattr(route, "_deskbroker_permission", None)
    if cached is not None:
        return cached
    reading = _reads_only(route.dependant)
    method = sorted(route.methods or {"GET"})[0]
    found = required(route.path, method, reading, route.openapi_extra)
    route._deskbroker_permission = found  # type: ignore[attr-defined]
    return found


def _reads_only(dependant: Any) -> bool:
    from deskbroker.api.deps import admin_reader  # the dependency marks a reading route

    return any(sub.call is admin_reader or _reads_only(sub) for sub in dependant.dependencies)


@cache
def catalog() -> dict[str, frozenset[str]]:
    """Every admin resource with the actions its routes need."""
    from deskbroker.api.app import api_router  # built once; routes are static

    found: dict[str, set[str]] = {}
    for route in api_router().routes:
        if isinstance(route, APIRoute) and route.path.startswith(ADMIN_PREFIX):
            resource, _, action = route_permission(route).partition(":")
            found.setdefault(resource, set()).add(action)
    return {resource: frozenset(actions) for resource, actions in sorted(found.items())}

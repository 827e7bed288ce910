"""Which permission each admin operation needs, read off the route itself.

The resource is the path's first segment after ``/api/v1/admin/``; the action is
``read`` for GET, ``create`` for POST on the collection, ``update`` (PATCH/PUT on an
item), ``delete``, or the verb that ends an operation's path (``POST
/desktops/{id}/power`` needs ``desktops:power``). An operation may name its own with
``openapi_extra={"x-permission": "resource:action"}`` (a POST that only reads names
``resource:read``). The
catalog of every resource and action is built from the routes, so a new endpoint is
covered, listed and grantable without a table to keep in step.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from deskbroker.services import permission_catalog

ADMIN_PREFIX = "/api/v1/admin/"
PERMISSION_KEY = "x-permission"

# The routes the catalog is read from. The routers that check grants need the catalog
# of all routes, and the app module assembles them: it hands its router here when it is
# imported, so this module (which every router imports) imports no router.
_routes: list[Callable[[], APIRouter]] = []


def read_catalog_from(routes: Callable[[], APIRouter]) -> None:
    """Name the function that builds every /api/v1 route (``app.api_router``)."""
    _routes[:] = [routes]


def required(path: str, method: str, extra: dict[str, Any] | None = None) -> str:
    """The ``resource:action`` an admin operation needs."""
    named = (extra or {}).get(PERMISSION_KEY)
    if named:
        return str(named)
    segments = [s for s in path.removeprefix(ADMIN_PREFIX).split("/") if s]
    resource = segments[0] if segments else "admin"
    if method == "GET":
        return f"{resource}:read"
    tail = segments[-1] if len(segments) > 1 else ""
    if tail and not tail.startswith("{"):
        return f"{resource}:{tail}"
    if method == "POST" and len(segments) == 1:
        return f"{resource}:create"
    if method == "DELETE":
        return f"{resource}:delete"
    return f"{resource}:update"


def route_permission(route: APIRoute, method: str) -> str:
    """The permission a mounted admin route needs for ``method``."""
    return required(route.path, method, route.openapi_extra)


@cache
def catalog() -> dict[str, frozenset[str]]:
    """Every admin resource with the actions its operations need, read off the OpenAPI
    document (where each operation's ``x-permission`` is shown too). Built once: the
    routes are static."""
    if not _routes:
        raise RuntimeError("the permission catalog is read before the API's routes exist")
    app = FastAPI()
    app.include_router(_routes[0]())
    found: dict[str, set[str]] = {}
    for path, operations in app.openapi().get("paths", {}).items():
        if not path.startswith(ADMIN_PREFIX):
            continue
        for method, operation in operations.items():
            resource, _, action = required(path, method.upper(), operation).partition(":")
            found.setdefault(resource, set()).add(action)
    return {resource: frozenset(actions) for resource, actions in sorted(found.items())}


# The services that check grants (services/standing.py, services/admin_access.py) read
# the catalog through their own seam: they sit below the API.
permission_catalog.provide(catalog)

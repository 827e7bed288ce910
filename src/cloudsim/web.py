"""HTTP plumbing shared by the simulated services: requests, responses, routing, errors."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

JsonDict = dict[str, Any]

_PARAM = re.compile(r"\{(\w+)\}")
# Views are built fresh as plain trees, so the circular-reference walk is wasted work.
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)


class ApiError(Exception):
    """An error answer; each service renders it in its own body format."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.headers = dict(headers or {})


@dataclass(slots=True)
class Response:
    """A complete answer; the body is already encoded so it can be sent in one write."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Request:
    """One parsed HTTP request plus what the auth and routing layers learn about it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    client_ip: str
    base_url: str
    params: dict[str, str] = field(default_factory=dict)
    route: str = ""
    auth: Any = None
    microversion: tuple[int, int] = (0, 0)

    def header(self, name: str) -> str | None:
        """Return a header value; names are case-insensitive."""
        return self.headers.get(name.lower())

    def arg(self, name: str) -> str | None:
        """Return the last value of a query parameter, as most OpenStack services do."""
        values = self.query.get(name)
        return values[-1] if values else None

    def json(self) -> Any:
        """Decode the JSON body; an unparsable body is a 400 as in every OpenStack API."""
        if not self.body:
            raise ApiError(400, "The request body is empty or not JSON.")
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise ApiError(400, f"Malformed request body: {exc}") from exc

    def json_object(self, key: str | None = None) -> JsonDict:
        """Decode a JSON object body, optionally unwrapping the resource key."""
        data = self.json()
        if not isinstance(data, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        if key is None:
            return data
        inner = data.get(key)
        if not isinstance(inner, dict):
            raise ApiError(400, f"Invalid input: '{key}' is a required property")
        return inner


Handler = Callable[[Request], Response]


def dumps(obj: Any) -> bytes:
    """Encode JSON compactly: listings are large and clients never need the spaces."""
    return _ENCODER.encode(obj).encode()


def json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    """Build a JSON response."""
    return Response(status, dumps(obj), headers=dict(headers or {}))


def empty(status: int = 204, headers: dict[str, str] | None = None) -> Response:
    """Build a bodiless response (204 and friends)."""
    return Response(status, b"", content_type="", headers=dict(headers or {}))


def text_response(status: int, text: str) -> Response:
    """Build a plain-text response (metadata service, Glance errors)."""
    return Response(status, text.encode(), content_type="text/plain; charset=UTF-8")


@functools.lru_cache(maxsize=8192)
def _iso_seconds(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso(ts: float | None) -> str | None:
    """Format an epoch time the way Nova does: second precision with a Z.

    Cached per second: rendering 10k servers built in the same second costs one strftime.
    """
    if ts is None:
        return None
    return _iso_seconds(int(ts))


def iso_micro(ts: float) -> str:
    """Format an epoch time with microseconds, as Keystone and Neutron do."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> float:
    """Parse an ISO 8601 timestamp from a query; naive times are UTC as in Nova."""
    text = value.strip().replace(" ", "+")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ApiError(400, f"Invalid timestamp: {value}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def int_arg(req: Request, name: str, default: int | None = None) -> int | None:
    """Read a non-negative integer query parameter or fail with 400."""
    raw = req.arg(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ApiError(400, f"{name} param must be an integer") from exc
    if value < 0:
        raise ApiError(400, f"{name} param must be positive")
    return value


@dataclass(slots=True)
class _Route:
    method: str
    regex: re.Pattern[str]
    name: str
    handler: Handler


class Router:
    """Maps method + path templates such as ``/servers/{server_id}`` to handlers."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")
        self._routes: list[_Route] = []

    def add(self, method: str, template: str, handler: Handler) -> None:
        """Register a handler; earlier templates win, so list literals before params."""
        full = self.prefix + template
        parts: list[str] = []
        pos = 0
        for found in _PARAM.finditer(full):
            parts.append(re.escape(full[pos : found.start()]))
            parts.append(f"(?P<{found.group(1)}>[^/]+)")
            pos = found.end()
        parts.append(re.escape(full[pos:]))
        pattern = "^" + "".join(parts) + "/?$"
        self._routes.append(_Route(method, re.compile(pattern), f"{method} {full}", handler))

    def dispatch(self, req: Request) -> Response:
        """Find the route and run it; unknown paths are 404 and wrong methods 405."""
        path_matched = False
        for route in self._routes:
            match = route.regex.match(req.path)
            if match is None:
                continue
            path_matched = True
            if route.method != req.method:
                continue
            req.params = {k: unquote(v) for k, v in match.groupdict().items()}
            req.route = route.name
            return route.handler(req)
        if path_matched:
            raise ApiError(405, "The method is not allowed for the requested URL.")
        raise ApiError(404, "The resource could not be found.")


def paginate(
    items: list[Any],
    req: Request,
    *,
    key: Callable[[Any], str],
    default_limit: int,
    max_limit: int,
) -> tuple[list[Any], bool]:
    """Apply limit/marker to an already-ordered list; returns the page and whether it is full.

    A full page is what OpenStack services use to decide to emit a ``next`` link.
    """
    limit = int_arg(req, "limit", default_limit)
    assert limit is not None
    limit = min(limit, max_limit)
    start = 0
    marker = req.arg("marker")
    if marker:
        for pos, item in enumerate(items):
            if key(item) == marker:
                start = pos + 1
                break
        else:
            raise ApiError(400, f"marker [{marker}] not found")
    page = items[start : start + limit]
    return page, limit > 0 and len(page) == limit

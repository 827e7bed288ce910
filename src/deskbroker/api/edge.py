"""What every HTTP exchange passes at the edge: the client's address behind trusted
proxies, the security headers of every response, and the /metrics bearer token."""

from __future__ import annotations

import hmac
import ipaddress

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deskbroker.errors import NotFound, Unauthorized
from deskbroker.outbound import Network

# A JSON API renders nothing and embeds nothing: no source of anything, framed by nobody.
API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
HSTS = "max-age=31536000"


class SecurityHeaders:
    """Adds to every response: nosniff, no framing, no referrer, a content security policy
    (unless the route set its own), ``Cache-Control: no-store`` on API answers (they
    carry tokens and personal data) unless the route set one, and HSTS on requests that
    came over https (directly, or per a trusted proxy's X-Forwarded-Proto)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        secure = scope.get("scheme") == "https"
        api = str(scope.get("path", "")).startswith("/api/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("Content-Security-Policy", API_POLICY)
                headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
                if api:
                    headers.setdefault("Cache-Control", "no-store")
                if secure:
                    headers.setdefault("Strict-Transport-Security", HSTS)
            await send(message)

        await self.app(scope, receive, with_headers)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def _trusted(address: str, proxies: tuple[Network, ...]) -> bool:
    ip = _address(address)
    return ip is not None and any(ip.version == n.version and ip in n for n in proxies)


class ForwardedFor:
    """The client's address (and scheme) from ``X-Forwarded-For`` (``-Proto``), only when
    the connection comes from a configured proxy (setting ``trusted_proxies``).

    The header is read from the right: each trusted proxy appends the address it saw, so
    the first address from the right that is not a trusted proxy is the client; what lies
    left of it was written by the client and proves nothing. Anyone else's header is
    ignored, so a client cannot choose the address that throttling and audit see."""

    def __init__(self, app: ASGIApp, proxies: tuple[Network, ...]) -> None:
        self.app = app
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        peer = scope.get("client")
        carried = scope["type"] in ("http", "websocket") and bool(self.proxies)
        if carried and peer is not None and _trusted(str(peer[0]), self.proxies):
            scope = dict(scope)
            self._rewrite(scope, peer)
        await self.app(scope, receive, send)

    def _rewrite(self, scope: Scope, peer: tuple[str, int]) -> None:
        forwarded: list[str] = []
        proto: str | None = None
        for name, value in scope.get("headers", []):
            if name == b"x-forwarded-for":
                forwarded += value.decode("latin-1").split(",")
            elif name == b"x-forwarded-proto":
                proto = value.decode("latin-1").split(",")[-1].strip().lower()
        client = str(peer[0])
        for hop in reversed(forwarded):
            ip = _address(hop)
            if ip is None:
                break  # garbage: trust nothing further left
            client = str(ip)
            if not _trusted(client, self.proxies):
                break
        scope["client"] = (client, 0)
        if proto in ("http", "https"):
            scope["scheme"] = proto


def check_metrics_token(configured: str, given: str | None) -> None:
    """``GET /metrics`` needs ``Authorization: Bearer <metrics_token>``; it is off (404)
    while no token is configured."""
    if not configured:
        raise NotFound(
            "metrics are off: set DESKBROKER_METRICS_TOKEN and scrape /metrics with "
            "Authorization: Bearer <that token>"
        )
    if given is None or not hmac.compare_digest(given.encode(), configured.encode()):
        raise Unauthorized("GET /metrics needs Authorization: Bearer <the metrics token>.")

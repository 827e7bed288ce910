"""Plain HTTP(S) requests, every connection bound to the configured source address.

Binding matters in two places: a desktop with several interfaces must speak to the
metadata service from its instance address, and the tests run many "instances" on one
host, each with its own loopback address.
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class Unreachable(OSError):
    """No answer: connection refused, timed out, reset. The request may be retried."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        """The body as JSON (``None`` when empty or not JSON)."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def request(
    method: str,
    url: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    source_address: str = "",
    timeout_s: float = 10.0,
    ca_file: str = "",
) -> Reply:
    """One request; raises ``Unreachable`` when the server gave no HTTP answer."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    source = (source_address, 0) if source_address else None
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=ca_file or None)
        conn = http.client.HTTPSConnection(
            host, parts.port, timeout=timeout_s, source_address=source, context=context
        )
    else:
        conn = http.client.HTTPConnection(
            host, parts.port, timeout=timeout_s, source_address=source
        )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    sent_headers = {"Accept": "application/json", **(headers or {})}
    data: bytes | None = None
    if body is not None:
        data = json.dumps(body).encode()
        sent_headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=sent_headers)
        response = conn.getresponse()
        return Reply(response.status, response.read())
    except (OSError, http.client.HTTPException) as exc:
        raise Unreachable(f"{method} {url}: {exc}") from exc
    finally:
        conn.close()

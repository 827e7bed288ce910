"""A webhook receiver on 127.0.0.1 for the events-out tests: a real HTTP server that
checks each delivery's signature the way docs/events.md tells a receiver to (with the
standard library only, not the broker's code), and can fail every other delivery."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def verify(secret: str, headers: Any, body: bytes, tolerance_s: int = 300) -> bool:
    """The receiver's check, as documented: HMAC-SHA256 keyed with the secret over
    ``timestamp + "." + body``, compared in constant time; the timestamp recent."""
    stamp = headers.get("Deskbroker-Timestamp", "")
    given = headers.get("Deskbroker-Signature", "")
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > tolerance_s:
        return False
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(f"v1={mac}", part.strip()) for part in given.split(","))


@dataclass
class Receiver:
    secret: str
    fail_every_other: bool = False
    accepted: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    refused: int = 0
    bad_signatures: int = 0
    headers_seen: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def ids(self) -> list[str]:
        with self.lock:
            return [str(e["id"]) for e in self.accepted]

    def handle(self, headers: Any, body: bytes) -> int:
        with self.lock:
            self.attempts += 1
            self.headers_seen.append(dict(headers.items()))
            if not verify(self.secret, headers, body):
                self.bad_signatures += 1
                return 401
            if self.fail_every_other and self.attempts % 2 == 1:
                self.refused += 1
                return 500
            event = json.loads(body)
            if headers.get("Deskbroker-Event-Id") != str(event["id"]):
                return 400
            self.accepted.append(event)
            return 200


@contextmanager
def receiving(secret: str, *, fail_every_other: bool = False) -> Iterator[Receiver]:
    """A running receiver; stopped (port closed) when the block ends."""
    receiver = Receiver(secret, fail_every_other)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = receiver.handle(self.headers, body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


# Deliveries posted at once and retried within a test's patience; a receiver that does
# not answer given up on in 2 s.
QUICK_WEBHOOKS: dict[str, float] = {
    "webhook_retry_base_s": 0.05,
    "webhook_retry_cap_s": 0.4,
    "webhook_poll_s": 0.2,
    "webhook_timeout_s": 2.0,
    "webhook_settle_s": 1.0,
    "engine_tick_s": 0.1,
}


@contextmanager
def engine_running(ctx: Any) -> Iterator[Any]:
    """An engine of 4 workers on ``ctx``, started, and stopped without waiting."""
    from deskbroker.engine.runner import Engine

    running = Engine(ctx, workers=4)
    running.start()
    try:
        yield running
    finally:
        running.stop(wait=False)

"""A failed webhook delivery is explained in the broker's own words, never the remote's.

A tenant administrator who aims a webhook at an internal service that does not speak
HTTP (an SSH server) and sends a test event must not read the service's banner back in
the delivery's ``last_error``: that would make webhooks a way to read internal services'
greetings. The detail goes to the operator's log. Real servers on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from deskbroker.config import Settings
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.store.webhooks import Claimed
from tests.helpers import Api, tenant_admin_of, wait_until
from tests.webhook_receiver import QUICK_WEBHOOKS, engine_running

SECRET = "receiver-secret-0123456789"
BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3 INTERNAL-7f3a\r\n\r\n"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Deliveries posted at once, a failure final after its one attempt."""
    return settings.model_copy(update=QUICK_WEBHOOKS)


@pytest.fixture
def engine(ctx: BrokerContext) -> Iterator[Engine]:
    with engine_running(ctx) as running:
        yield running


def _serving(answer: bytes) -> Iterator[int]:
    """A TCP server that says ``answer`` to whoever connects, reads, and hangs up."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                try:
                    if answer:
                        conn.sendall(answer)
                    conn.settimeout(2)
                    conn.recv(65536)
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def sshd() -> Iterator[int]:
    """Not an SSH server, but it greets like one: a banner, then a blank line."""
    yield from _serving(BANNER)


@pytest.fixture
def hangs_up() -> Iterator[int]:
    yield from _serving(b"")


def _tenant_admin(api: Api) -> Api:
    return tenant_admin_of(api, "evil", "evil-boss")


def test_a_delivery_to_a_service_that_does_not_speak_http_shows_no_banner(
    api: Api, engine: Engine, sshd: int, caplog: pytest.LogCaptureFixture
) -> None:
    evil = _tenant_admin(api)
    body = {
        "name": "scan",
        "url": f"http://127.0.0.1:{sshd}/",
        "kinds": ["login"],
        "secret": SECRET,
        "max_attempts": 1,
    }
    hook = evil.post("webhooks", body)
    with caplog.at_level(logging.INFO, logger="deskbroker.webhooks"):
        evil.post(f"webhooks/{hook['id']}/test", {}, status=202)
        failed = wait_until(
            lambda: evil.get(f"webhooks/{hook['id']}/deliveries?state=failed")["items"],
            "the delivery to fail",
        )
    delivery = failed[0]
    assert delivery["last_status"] is None
    assert delivery["last_error"] == (
        "the receiver does not speak HTTP (its answer is no HTTP response)"
    )
    # Nothing the service said, anywhere in what the tenant reads.
    page = json.dumps(evil.get(f"webhooks/{hook['id']}/deliveries"))
    page += json.dumps(evil.get(f"webhooks/{hook['id']}"))
    page += json.dumps(evil.get("events?limit=100"))
    for said in ("SSH-2.0", "OpenSSH", "INTERNAL-7f3a", "status line"):
        assert said not in page
    # The operator's log has the detail, and no secret.
    assert "illegal status line" in caplog.text and "OpenSSH" in caplog.text
    assert SECRET not in caplog.text


def _delivery(ctx: BrokerContext, url: str) -> Claimed:
    return Claimed(
        id="d",
        webhook_id="w",
        event_id=1,
        url=url,
        secret_sealed=ctx.secrets.seal(SECRET),
        payload={"id": "1"},
        attempts=0,
        max_attempts=1,
    )


def test_every_failure_is_told_in_the_brokers_own_words(
    engine: Engine, ctx: BrokerContext, sshd: int, hangs_up: int
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as gone:
        closed = gone.getsockname()[1]  # a port nobody listens on once the block ends
    cases: list[tuple[str, str, Any]] = [
        (f"http://127.0.0.1:{sshd}/", "the receiver does not speak HTTP", BANNER),
        (f"https://127.0.0.1:{sshd}/", "the TLS handshake with the receiver failed", "SSL"),
        (f"http://127.0.0.1:{closed}/", "connection refused", "Errno"),
        (
            f"http://127.0.0.1:{hangs_up}/",
            "the receiver closed the connection without answering",
            "Server disconnected",
        ),
    ]
    for url, words, not_said in cases:
        status, error = engine.webhooks.post(_delivery(ctx, url))
        assert status is None and error.startswith(words), (url, error)
        said = not_said.decode() if isinstance(not_said, bytes) else not_said
        assert said.strip() not in error and "SSH" not in error, (url, error)

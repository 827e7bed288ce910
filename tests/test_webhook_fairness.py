"""Webhooks against receivers that drip their answer a byte at a time: each post is given
up at its whole-call deadline (its connection closed), and one tenant's dripping
receivers hold at most ``webhook_per_tenant`` delivery threads, so another tenant's
events still go out within seconds."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime

import pytest
from sqlalchemy import func, select

from deskbroker.config import Settings
from deskbroker.engine.runner import Engine
from deskbroker.engine.webhooks import Dispatcher
from deskbroker.services import webhook_limits
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import WebhookDelivery, utcnow
from deskbroker.store.webhooks import Claimed
from tests.helpers import Api, tenant_admin_of, wait_until
from tests.tarpit import drip
from tests.webhook_receiver import engine_running, receiving

SECRET = "receiver-secret-0123456789"
TIMEOUT_S = 2.0
# An answer whose head never ends: each byte comes well within any per-read timeout.
DRIPPED_HEAD = b"HTTP/1.1 200 OK\r\nX-Slow: "


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Quick retries; the default threads (4), 2 per webhook, so 3 per tenant."""
    return settings.model_copy(
        update={
            "webhook_retry_base_s": 0.05,
            "webhook_retry_cap_s": 0.4,
            "webhook_poll_s": 0.2,
            "webhook_timeout_s": TIMEOUT_S,
            "webhook_settle_s": 1.0,
            "engine_tick_s": 0.1,
            "webhook_workers": 4,
        }
    )


@pytest.fixture
def engine(ctx: BrokerContext) -> Iterator[Engine]:
    with engine_running(ctx) as running:
        yield running


class _Dripper:
    """One connection's receiver that drips ``DRIPPED_HEAD``, and notes when the broker
    closes the connection."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.closed_at: float | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(0.25)
        with conn:
            for sent in range(240):  # a minute at most, should the broker never let go
                try:
                    if conn.recv(65536) == b"":
                        self.closed_at = time.monotonic()
                        return
                except TimeoutError:
                    pass  # the request read; nothing more from the broker
                except OSError:
                    self.closed_at = time.monotonic()
                    return
                byte = DRIPPED_HEAD[sent : sent + 1] or b" "
                with suppress(OSError):
                    conn.sendall(byte)


@contextmanager
def dripper() -> Iterator[_Dripper]:
    peer = _Dripper()
    try:
        yield peer
    finally:
        peer.listener.close()


@pytest.mark.serial
def test_a_dripping_receiver_is_given_up_at_the_deadline_with_its_socket_closed(
    ctx: BrokerContext,
) -> None:
    dispatcher = Dispatcher(ctx, "fairness-test")
    delivery = Claimed(
        id="d",
        webhook_id="w",
        event_id=1,
        url="",
        secret_sealed=ctx.secrets.seal(SECRET),
        payload={"id": "1"},
        attempts=0,
        max_attempts=1,
    )
    try:
        with dripper() as peer:
            started = time.monotonic()
            status, error = dispatcher.post(
                Claimed(**{**delivery.__dict__, "url": f"http://127.0.0.1:{peer.port}/hook"})
            )
            spent = time.monotonic() - started
            assert status is None and error == f"no answer within {TIMEOUT_S:g} s"
            assert TIMEOUT_S - 0.1 < spent < TIMEOUT_S + 1.0, spent
            wait_until(lambda: peer.closed_at is not None, "the broker to close the connection")
            assert peer.closed_at is not None and peer.closed_at - started < TIMEOUT_S + 1.5
    finally:
        dispatcher.close(wait=False)


def _in_flight(ctx: BrokerContext, tenant_id: str) -> int:
    """The tenant's deliveries leased now, by any broker."""
    now: datetime = utcnow()
    with ctx.db.read() as session:
        return int(
            session.execute(
                select(func.count()).where(
                    WebhookDelivery.tenant_id == tenant_id,
                    WebhookDelivery.state == "pending",
                    WebhookDelivery.lease_expires_at >= now,
                )
            ).scalar_one()
        )


@pytest.mark.serial
def test_one_tenants_dripping_receivers_delay_no_other_tenants_events(
    api: Api, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The flood is three test events per webhook at once: past the pace of one per ten
    # seconds (tests/test_webhook_caps.py), which this test does not measure.
    monkeypatch.setattr(webhook_limits.TEST_PACE, "interval_s", 0.0)
    evil_tenant = api.post("tenants", {"name": "evil"})
    evil = tenant_admin_of(api, "evil", "evil-boss")
    with receiving(SECRET) as victim, drip(DRIPPED_HEAD, interval_s=0.5) as port:
        mine = api.post(
            "webhooks", {"name": "victim", "url": victim.url, "kinds": ["login"], "secret": SECRET}
        )
        hooks = []
        queued = time.monotonic()
        for i in range(3):  # more webhooks than threads: the bound is the tenant's
            body = {"name": f"slow{i}", "url": f"http://127.0.0.1:{port}/", "kinds": ["login"]}
            hooks.append(evil.post("webhooks", {**body, "secret": SECRET}))
            for _ in range(3):
                evil.post(f"webhooks/{hooks[-1]['id']}/test", {}, status=202)
        wait_until(lambda: _in_flight(api.ctx, evil_tenant["id"]) >= 2, "the drips to start")

        before = len(victim.accepted)
        api.post(f"webhooks/{mine['id']}/test", {}, status=202)
        sent = time.monotonic()
        peak = 0
        while len(victim.accepted) == before and time.monotonic() - sent < 10:
            peak = max(peak, _in_flight(api.ctx, evil_tenant["id"]))
            time.sleep(0.05)
        # Fan-out waits for the event to settle (1 s), then a free thread posts it.
        assert len(victim.accepted) > before, "the other tenant's event never went out"
        assert time.monotonic() - sent < 5.0
        assert peak <= 3  # webhook_per_tenant unset: one of the 4 threads left to others

        # Each dripped post ends at the deadline as a failed attempt, to be retried.
        def failed_attempt() -> bool:
            for hook in hooks:
                for d in evil.get(f"webhooks/{hook['id']}/deliveries")["items"]:
                    if (
                        d["attempts"] >= 1
                        and d["last_error"] == f"no answer within {TIMEOUT_S:g} s"
                    ):
                        return True
            return False

        wait_until(failed_attempt, "a dripped delivery recorded as failed")
        assert time.monotonic() - queued < 3 * TIMEOUT_S + 4.0

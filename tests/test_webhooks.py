"""Webhooks: every event delivered once after deduplication by a receiver that fails
half of its deliveries, signatures a receiver can check, failed deliveries visible, the
outbound policy on webhook URLs, and a dead receiver that does not slow logins."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from deskbroker.config import Settings
from deskbroker.domain import webhooks as rules
from deskbroker.engine.runner import Engine
from deskbroker.engine.webhooks import body_of
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import WebhookDelivery
from deskbroker.store.webhooks import Claimed
from deskbroker.write_guard import HeldTransaction
from tests.helpers import Api, scan_now, wait_until
from tests.tarpit import tarpit
from tests.webhook_receiver import QUICK_WEBHOOKS, engine_running, receiving, verify

SECRET = "receiver-secret-0123456789"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Retries within the test's patience; a dead receiver given up on quickly."""
    return settings.model_copy(update=QUICK_WEBHOOKS)


@pytest.fixture
def engine(ctx: BrokerContext) -> Iterator[Engine]:
    with engine_running(ctx) as running:
        yield running


def _hook(api: Api, url: str, kinds: list[str], **extra: Any) -> dict[str, Any]:
    body = {"name": "billing", "url": url, "kinds": kinds, "secret": SECRET, **extra}
    return api.post("webhooks", body)


def _event_ids(api: Api, kinds: tuple[str, ...], after: int) -> set[str]:
    found: set[str] = set()
    for kind in kinds:
        page = api.get(f"events?kind={kind}&limit=1000")
        found |= {str(e["id"]) for e in page["items"] if int(e["id"]) > after}
    return found


def _newest_event(api: Api) -> int:
    items = api.get("events?limit=1")["items"]
    return int(items[0]["id"]) if items else 0


def test_a_receiver_failing_half_its_deliveries_gets_every_event_once_after_dedup(
    api: Api, engine: Engine
) -> None:
    api.seed_pool(3, users=3)
    with receiving(SECRET, fail_every_other=True) as receiver:
        hook = _hook(api, receiver.url, ["login", "connect"])
        assert "secret" not in hook and "secret_sealed" not in hook and hook["has_secret"]
        start = _newest_event(api)
        for _ in range(4):
            for i in range(3):
                api.login(f"user{i}")
        expected = _event_ids(api, ("login",), start)
        assert len(expected) == 12

        def all_received() -> bool:
            return expected <= set(receiver.ids())

        wait_until(all_received, lambda: f"{expected - set(receiver.ids())} to arrive")
        # Failures were real (every other attempt refused), so some were sent twice or
        # more; after deduplication by id each event is there exactly once.
        assert receiver.refused >= 12 and receiver.bad_signatures == 0
        assert sorted(set(receiver.ids())) == sorted(expected)
        deliveries = wait_until(
            lambda: (
                page
                if (page := api.get(f"webhooks/{hook['id']}/deliveries?limit=100"))["total"] == 12
                and all(d["state"] == "delivered" for d in page["items"])
                else None
            ),
            "every delivery recorded as delivered",
        )
        assert {d["payload"]["id"] for d in deliveries["items"]} == expected
        assert all(d["attempts"] >= 1 and d["last_status"] == 200 for d in deliveries["items"])
        assert any(d["attempts"] >= 2 for d in deliveries["items"])
        # The header names the same id as the body.
        assert all(h["Deskbroker-Event-Id"].isdigit() for h in receiver.headers_seen)


def test_signature_checks_out_and_fails_on_any_change() -> None:
    payload = {"id": "42", "kind": "login", "detail": {"x": 1}}
    body = body_of(payload)
    now = datetime.now(UTC)
    stamp = int(now.timestamp())
    header = rules.signature(SECRET, stamp, body)
    headers = {"Deskbroker-Timestamp": str(stamp), "Deskbroker-Signature": header}
    # The documented receiver (standard library only) and the broker's verify agree.
    assert verify(SECRET, headers, body)
    assert rules.verify(SECRET, str(stamp), header, body, now)
    assert not rules.verify(SECRET, str(stamp), header, body + b" ", now)
    assert not rules.verify("another-secret-0123456", str(stamp), header, body, now)
    assert not rules.verify(SECRET, str(stamp + 1), header, body, now)
    # An old delivery replayed with its valid signature is refused.
    assert not rules.verify(
        SECRET, str(stamp - 3600), rules.signature(SECRET, stamp - 3600, body), body, now
    )
    assert not verify(SECRET, {**headers, "Deskbroker-Signature": "v1=00"}, body)


def test_a_test_event_reaches_one_webhook_signed(api: Api, engine: Engine) -> None:
    with receiving(SECRET) as receiver, receiving(SECRET) as other:
        hook = _hook(api, receiver.url, ["quota_reached"])
        _hook(api, other.url, ["quota_reached"], name="other")
        queued = api.post(f"webhooks/{hook['id']}/test", {}, status=202)
        assert queued["webhook_id"] == hook["id"]
        wait_until(lambda: receiver.accepted, "the test event")
        event = receiver.accepted[0]
        assert event["kind"] == "webhook.test" and event["detail"]["webhook_id"] == hook["id"]
        assert receiver.bad_signatures == 0 and other.attempts == 0


def test_a_receiver_that_stays_down_ends_in_failed_deliveries_visible_in_the_api(
    api: Api, engine: Engine, ctx: BrokerContext
) -> None:
    with receiving(SECRET) as gone:
        url = gone.url  # a port that is closed once the block ends
    hook = _hook(api, url, ["login"], max_attempts=3)
    api.post(f"webhooks/{hook['id']}/test", {}, status=202)
    failed = wait_until(
        lambda: api.get(f"webhooks/{hook['id']}/deliveries?state=failed")["items"],
        "the delivery to fail for good",
    )
    assert failed[0]["attempts"] == 3 and failed[0]["last_status"] is None
    assert failed[0]["last_error"]
    # Retrying puts it back in line from its first attempt.
    requeued = api.post(f"webhooks/{hook['id']}/retry", {}, status=200)
    assert requeued["requeued"] == 1
    with ctx.db.read() as session:
        assert session.query(WebhookDelivery).count() == 1


def test_webhook_urls_go_through_the_outbound_policy_and_input_is_checked(
    api: Api, ctx: BrokerContext
) -> None:
    # The broker's own settings deny what no test allowed: the metadata service.
    for url in ("http://169.254.169.254/latest", "http://[fe80::1]/x", "ftp://example.org/x"):
        answer = api.client.post(
            "/api/v1/admin/webhooks",
            json={"name": "x", "url": url, "kinds": ["login"], "secret": SECRET},
            headers=api.headers,
        )
        assert answer.status_code == 422, answer.text
    for body, word in (
        ({"kinds": ["logins"]}, "kinds"),
        ({"kinds": []}, "kinds"),
        ({"secret": "short"}, "secret"),
        ({"url": "http://user:pw@example.org/"}, "user or password"),
    ):
        answer = api.client.post(
            "/api/v1/admin/webhooks",
            json={
                "name": "x",
                "url": "http://example.org/h",
                "kinds": ["login"],
                "secret": SECRET,
                **body,
            },
            headers=api.headers,
        )
        assert answer.status_code == 422 and word in answer.text, answer.text
    hook = _hook(api, "http://example.org/h", ["login"])
    # A new URL without a new secret would send the old receiver's secret elsewhere.
    api.patch(f"webhooks/{hook['id']}", {"url": "http://example.net/h"}, status=422)
    moved = api.patch(
        f"webhooks/{hook['id']}", {"url": "http://example.net/h", "secret": SECRET + "x"}
    )
    assert moved["url"] == "http://example.net/h"
    with ctx.db.read() as session:
        assert session.query(WebhookDelivery).count() == 0
    assert not api.get("webhooks?name=x")["items"]  # nothing half-written by refusals


def _login_seconds(api: Api, rounds: int) -> list[float]:
    spent = []
    for i in range(rounds):
        started = time.perf_counter()
        api.login(f"user{i % 3}")
        spent.append(time.perf_counter() - started)
    return spent


@pytest.mark.serial
def test_a_dead_receiver_does_not_slow_logins(api: Api, engine: Engine) -> None:
    api.seed_pool(3, users=3)
    _login_seconds(api, 6)  # warm: caches, first claims
    quiet = statistics.median(_login_seconds(api, 30))
    with tarpit() as silent, receiving(SECRET, fail_every_other=True) as healthy:
        hook = _hook(api, silent.url, ["login", "assignment", "connect", "session"])
        _hook(api, "http://127.0.0.1:9/closed", ["login"], name="closed")
        _hook(api, healthy.url, ["login"], name="healthy")
        start = _newest_event(api)
        loud = _login_seconds(api, 30)
        # The dispatcher was really posting to the silent receiver meanwhile.
        wait_until(lambda: silent.accepted >= 1, "the tarpit to be called")
        pending = api.get(f"webhooks/{hook['id']}/deliveries?state=pending&limit=1")
        assert pending["total"] >= 1
        # The dead receivers' backlog does not stand in front of a live (if flaky) webhook's.
        expected = _event_ids(api, ("login",), start)
        assert len(expected) == 30
        wait_until(lambda: expected <= set(healthy.ids()), "the healthy webhook's events")
        assert silent.accepted < 30  # the dead one is still far behind
    # Loosely: each post waits 2 s for an answer that never comes, and logins take
    # no part in it (a login waiting for a post would take 2 s or more).
    assert statistics.median(loud) < max(3 * quiet, quiet + 0.5), (quiet, loud)


def test_quota_reached_and_center_degraded_reach_their_webhooks(api: Api, engine: Engine) -> None:
    api.seed_pool(2, users=2, ports={"vnc": 5901})
    tenant = api.get("tenants?name=default")["items"][0]["id"]
    api.patch(f"tenants/{tenant}", {"quota_sessions": 1})
    with receiving(SECRET) as receiver:
        _hook(api, receiver.url, ["quota_reached", "center_degraded"])
        users = [api.login(f"user{i}") for i in range(2)]
        for i, user in enumerate(users):
            answer = api.client.post(
                f"/api/v1/client/desktops/{user['offers'][0]['desktop']['id']}/connect",
                json={"protocol": "vnc"},
                headers={"Authorization": f"Bearer {user['token']}"},
            )
            assert answer.status_code == (200 if i == 0 else 409), answer.text
        # A cloud that does not answer: its scan fails, the center is degraded (once).
        center = api.post(
            "centers",
            {
                "name": "gone-cloud",
                "kind": "openstack",
                "params": {
                    "auth_url": "http://127.0.0.1:9/v3",
                    "project_name": "demo",
                    "username": "demo",
                    "retry_base_s": 0.01,
                },
                "secrets": {"password": "password"},
            },
        )
        for _ in range(2):
            assert scan_now(api, center["id"])["status"] == "error"

        def kinds() -> list[str]:
            return sorted(e["kind"] for e in receiver.accepted)

        wait_until(lambda: kinds() == ["center.degraded", "quota.reached"], lambda: str(kinds()))
        by_kind = {e["kind"]: e for e in receiver.accepted}
        assert by_kind["quota.reached"]["detail"]["quota"] == "sessions"
        assert by_kind["quota.reached"]["actor"] == "user1"
        assert by_kind["center.degraded"]["detail"]["center_id"] == center["id"]
        assert receiver.bad_signatures == 0


def test_a_delivery_is_never_posted_inside_a_write_unit(engine: Engine, ctx: BrokerContext) -> None:
    delivery = Claimed(
        id="d",
        webhook_id="w",
        event_id=1,
        url="http://127.0.0.1:9/hook",
        secret_sealed=ctx.secrets.seal(SECRET),
        payload={"id": "1"},
        attempts=0,
        max_attempts=1,
    )
    with pytest.raises(HeldTransaction), ctx.db.write():
        engine.webhooks.post(delivery)
    # Outside one it is posted (to a closed port here: a connection error, in words).
    status, error = engine.webhooks.post(delivery)
    assert status is None and error == "connection refused"

"""What one tenant's remote identity sources may hold: a cap over all the tenant's
directories and providers, a deadline on each call as a whole (a server that drips its
answer one byte a second is given up on, and the breaker counts it), a bounded number of
helper threads, and OpenID Connect providers behind the same guard as directories."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from deskbroker.config import Settings
from deskbroker.services.source_guard import SourceGuard, SourceTimedOut, TenantBusy
from tests.helpers import Api, wait_until
from tests.tarpit import HTTP_HEAD, LDAP_HEAD, drip

# Asserts latencies of a second or less: runs in the serial phase, after the parallel
# workers (docs/architecture.md, "Tests").
pytestmark = pytest.mark.serial

DEADLINE_S = 2.0
SLACK_S = 1.5


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    update: dict[str, Any] = {
        "source_call_deadline_s": DEADLINE_S,
        "source_breaker_failures": 2,
        "source_breaker_cooldown_s": 60,
    }
    update.update(getattr(request, "param", {}))
    return settings.model_copy(update=update)


def _held(
    guard: SourceGuard, source: str, tenant: str, release: threading.Event
) -> threading.Event:
    """A call of ``source`` that stays in until ``release``; returns once it is inside."""
    inside = threading.Event()

    def slow() -> None:
        inside.set()
        release.wait(30)

    threading.Thread(
        target=guard.call, args=(source, source, slow), kwargs={"tenant_id": tenant}, daemon=True
    ).start()
    assert inside.wait(10)
    return inside


def test_one_tenant_s_sources_share_a_cap_that_other_tenants_do_not() -> None:
    guard = SourceGuard(Settings(tenant_max_concurrent=3, source_max_concurrent=2))
    release = threading.Event()
    try:
        for source in ("ldap-1", "ldap-1", "ldap-2"):
            _held(guard, source, "tenant-b", release)
        # A third source of the same tenant is refused at once, though it is idle...
        started = time.perf_counter()
        with pytest.raises(TenantBusy) as refused:
            guard.call("ldap-3", "ldap-3", lambda: "never", tenant_id="tenant-b")
        assert time.perf_counter() - started < 0.5
        assert refused.value.status == 503 and refused.value.extra["retry_after"] > 0
        assert "tenant" in refused.value.detail
        # ...and its circuit is not charged for the refusal.
        assert guard.state("ldap-3") == "closed"
        # Another tenant's source answers.
        assert guard.call("ldap-9", "ldap-9", lambda: "yes", tenant_id="tenant-a") == "yes"
    finally:
        release.set()
    wait_until(lambda: not guard.live_threads, "the helper threads to end", timeout_s=10)
    assert guard.call("ldap-3", "ldap-3", lambda: "free", tenant_id="tenant-b") == "free"


def test_calls_given_up_on_stay_bounded_and_end() -> None:
    """Each call that passes its deadline leaves a helper thread behind until the remote
    lets go: they never exceed ``source_threads_max``, and their slots come back."""
    guard = SourceGuard(
        Settings(
            source_threads_max=3,
            source_call_deadline_s=0.2,
            source_breaker_failures=1000,
            source_max_concurrent=100,
        )
    )
    release = threading.Event()
    before = threading.active_count()
    try:
        for n in range(10):
            with pytest.raises((SourceTimedOut, TenantBusy)):
                guard.call(f"s{n % 2}", "s", lambda: release.wait(30), tenant_id=f"t{n}")
            assert guard.live_threads <= 3
            assert threading.active_count() - before <= 3
        assert guard.live_threads == 3
        started = time.perf_counter()
        with pytest.raises(TenantBusy) as refused:
            guard.call("s9", "s9", lambda: "never", tenant_id="t99")
        assert time.perf_counter() - started < 0.1
        assert refused.value.extra["reason"] == "broker_busy"
    finally:
        release.set()
    wait_until(lambda: not guard.live_threads, "the helper threads to end", timeout_s=10)
    assert guard.call("s9", "s9", lambda: "answered", tenant_id="t99") == "answered"


def test_a_dripping_directory_is_given_up_on_within_the_deadline(api: Api) -> None:
    with drip(LDAP_HEAD, b"\x00") as port:
        api.post(
            "identity-sources",
            {
                "name": "drip",
                "kind": "ldap",
                "domain": "drip.example",
                "params": {
                    "servers": [f"ldap://127.0.0.1:{port}"],
                    "base_dn": "ou=people,dc=example,dc=org",
                    "timeout_s": 5,  # per read: the drip always beats it
                    "connect_timeout_s": 1,
                },
            },
        )

        def login() -> tuple[float, httpx.Response]:
            started = time.perf_counter()
            answer = api.client.post(
                "/api/v1/auth/login", json={"username": "ann@drip.example", "password": "x"}
            )
            return time.perf_counter() - started, answer

        for _ in range(2):
            took, answer = login()
            assert answer.status_code == 503, answer.text
            assert DEADLINE_S - 0.1 <= took < DEADLINE_S + SLACK_S, took
            assert answer.headers.get("Retry-After")
        # Two give-ups in a row opened the circuit: the next login does not wait at all.
        took, answer = login()
        assert answer.status_code == 503 and took < 0.5, (took, answer.text)
        assert answer.json()["reason"] == "source_suspended"


def test_a_dripping_identity_provider_is_given_up_on_within_the_deadline(api: Api) -> None:
    with drip(HTTP_HEAD) as port:
        api.post(
            "identity-sources",
            {
                "name": "drip",
                "kind": "oidc",
                "params": {
                    "issuer": f"http://127.0.0.1:{port}",
                    "client_id": "broker",
                    "timeout_s": 5,  # per read: the drip always beats it
                },
                "position": 20,
            },
        )

        def begin(path: str) -> tuple[float, httpx.Response]:
            started = time.perf_counter()
            if path == "start":
                answer = api.client.get("/api/v1/auth/oidc/drip/start", follow_redirects=False)
            else:
                answer = api.client.post("/api/v1/auth/oidc/drip/device", json={})
            return time.perf_counter() - started, answer

        for path in ("start", "device"):
            took, answer = begin(path)
            assert answer.status_code == 503, answer.text
            assert DEADLINE_S - 0.1 <= took < DEADLINE_S + SLACK_S, took
        took, answer = begin("start")
        assert answer.status_code == 503 and took < 0.5, (took, answer.text)
        assert answer.json()["reason"] == "source_suspended"

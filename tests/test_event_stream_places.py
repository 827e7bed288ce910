"""Event streams have places of their own: a few per tenant and a few in all per worker,
answered 429 past them, and they never take the places of other requests, so a tenant
administrator's hundred open streams cannot turn away other tenants' logins."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from deskbroker.api.admin import webhooks as webhooks_api
from deskbroker.api.app import create_app
from deskbroker.config import Settings
from tests.gateway_support import Running, free_port, serve
from tests.helpers import Api, wait_until
from tests.test_event_stream import _admin


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Two requests at once in all: three open streams took every place before.
    return settings.model_copy(
        update={"event_streams_per_tenant": 2, "event_streams": 3, "max_requests_in_flight": 2}
    )


@pytest.fixture
def broker(api: Api) -> Iterator[Running]:
    running = serve(create_app(api.ctx), free_port())
    yield running
    running.stop()


class Streams:
    """Streams opened over real HTTP and kept open (their readers held: a reader let go
    closes its connection)."""

    def __init__(self, http: httpx.Client, stack: ExitStack) -> None:
        self.http = http
        self.stack = stack
        self.readers: list[Iterator[str]] = []

    def open(self, admin: Api, stack: ExitStack | None = None) -> httpx.Response:
        answer = (stack or self.stack).enter_context(
            self.http.stream("GET", "/api/v1/admin/event-stream?max_s=60", headers=admin.headers)
        )
        if answer.status_code != 200:
            answer.read()
            return answer
        reader = answer.iter_lines()
        first = next(reader)
        assert first.startswith("retry:"), first
        self.readers.append(reader)
        return answer


def _refusal(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 429, answer.text
    assert int(answer.headers["Retry-After"]) > 0
    problem: dict[str, Any] = answer.json()
    return problem


def test_streams_take_places_of_their_own(api: Api, broker: Running) -> None:
    a = _admin(api, "alice-admin", "acme")
    b = _admin(api, "bob-admin", "globex")
    # 30 s: one CI run under full load waited more than 10 s for the first answer.
    with httpx.Client(base_url=broker.url, timeout=30) as http, ExitStack() as stack:
        streams = Streams(http, stack)
        first = ExitStack()
        assert streams.open(a, first).status_code == 200
        assert streams.open(a).status_code == 200
        problem = _refusal(streams.open(a))
        assert "DESKBROKER_EVENT_STREAMS_PER_TENANT" in problem["detail"], problem

        # Another tenant still gets its stream, up to the worker's places in all.
        assert streams.open(b).status_code == 200
        problem = _refusal(streams.open(b))
        assert "(DESKBROKER_EVENT_STREAMS)" in problem["detail"], problem

        # Three streams open, two requests at once allowed: other requests still pass.
        for _ in range(3):
            assert http.get("/api/v1/admin/pools", headers=b.headers).status_code == 200

        # A stream whose client left gives its place back.
        first.close()

        def reopened() -> bool:
            with ExitStack() as again:
                return streams.open(a, again).status_code == 200

        wait_until(reopened, "the closed stream's place to come back", timeout_s=10)


def test_a_stream_ends_once_its_caller_may_no_longer_read_events(
    api: Api, broker: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream lasts up to an hour: a caller disabled (or demoted, or whose token is
    revoked) stops receiving events within a few seconds, as their next request would be
    refused."""
    monkeypatch.setattr(webhooks_api, "STREAM_RECHECK_S", 0.2)
    a = _admin(api, "alice-admin", "acme")
    alice = api.get("users?username=alice-admin")["items"][0]["id"]
    url = "/api/v1/admin/event-stream?max_s=60"
    with (
        httpx.Client(base_url=broker.url, timeout=30) as http,
        http.stream("GET", url, headers=a.headers) as answer,
    ):
        assert answer.status_code == 200
        lines = answer.iter_lines()
        assert next(lines).startswith("retry:")
        started = time.monotonic()
        api.patch(f"users/{alice}", {"disabled": True})
        rest = list(lines)  # ends when the broker closes the stream
        took = time.monotonic() - started
    assert took < 10, took
    assert not any(line.startswith("data:") for line in rest), rest


def test_a_stream_ends_when_its_callers_token_expires(api: Api, broker: Running) -> None:
    """A request after the token's expiry would be refused: the stream does not outlast
    it either, whatever ``max_s`` asked for."""
    # The settings allow 30 s at least: this broker's signer only. Whole seconds, from
    # the sign-in: between 5 and 6 s left when the stream opens.
    api.ctx.signer.ttl_s = 6
    a = _admin(api, "alice-admin", "acme")
    with (
        httpx.Client(base_url=broker.url, timeout=30) as http,
        http.stream("GET", "/api/v1/admin/event-stream?max_s=60", headers=a.headers) as answer,
    ):
        assert answer.status_code == 200
        started = time.monotonic()
        lines = list(answer.iter_lines())  # ends when the broker closes the stream
        took = time.monotonic() - started
    assert lines[0].startswith("retry:")
    assert took < 15, took  # max_s would have held it 60 s
    # Expired (a second later, whatever the clocks' rounding), the token opens no other.
    time.sleep(1)
    assert http_refused(broker, a) == 401


def http_refused(broker: Running, admin: Api) -> int:
    with httpx.Client(base_url=broker.url, timeout=30) as http:
        return http.get("/api/v1/admin/event-stream?max_s=0", headers=admin.headers).status_code

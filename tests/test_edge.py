"""The HTTP edge: security headers, the client's address behind proxies, /metrics."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deskbroker.api.app import create_app
from deskbroker.bootstrap import add_local_user, ensure_defaults
from deskbroker.config import Settings
from deskbroker.services.context import BrokerContext
from tests.helpers import Api

PROXY = ("10.9.8.7", 4711)


def _broker(settings: Settings, tmp_path: Path, **changes: object) -> BrokerContext:
    values = settings.model_dump()
    values.update(data_dir=tmp_path / "edge", **changes)
    ctx = BrokerContext.from_settings(Settings(**values))
    ensure_defaults(ctx)
    return ctx


@pytest.fixture
def behind_proxy(settings: Settings, tmp_path: Path) -> Iterator[BrokerContext]:
    ctx = _broker(settings, tmp_path, trusted_proxies="10.9.0.0/16")
    add_local_user(ctx, "admin", "admin-password-1", role="global_admin")
    yield ctx
    ctx.db.dispose()


def _failed_login_from(client: TestClient, api: Api, forwarded: str | None) -> str:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    client.post(
        "/api/v1/auth/login", json={"username": "nobody", "password": "wrong"}, headers=headers
    )
    events = api.get("events?kind=login_failed")["items"]
    return str(events[0]["detail"]["client"])


def test_every_response_carries_the_security_headers(api: Api) -> None:
    for response in (
        api.client.get("/healthz"),
        api.client.get("/api/v1/admin/centers"),  # a 401 problem
        api.client.get("/api/v1/openapi.json"),
        api.client.post("/api/v1/auth/login", json={"username": "x", "password": "y"}),
    ):
        headers = response.headers
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "strict-transport-security" not in headers  # plain http: no HSTS
    assert api.client.get("/api/v1/admin/centers").headers["cache-control"] == "no-store"
    assert "default-src 'none'" in api.client.get("/healthz").headers["content-security-policy"]


def test_the_docs_page_loads_nothing_from_another_host(api: Api) -> None:
    page = api.client.get("/api/v1/docs")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    script_src = policy.split("script-src")[1].split(";")[0].split()
    assert script_src == ["'self'"], policy
    assert "<script>" not in page.text  # no inline script: the policy would refuse it
    for asset in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert asset.startswith("/static/"), asset
        assert api.client.get(asset).status_code == 200, asset


def test_hsts_over_https(ctx: BrokerContext) -> None:
    with TestClient(create_app(ctx), base_url="https://broker.example.org") as client:
        assert client.get("/healthz").headers["strict-transport-security"].startswith("max-age=")


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(behind_proxy: BrokerContext) -> None:
    app = create_app(behind_proxy)
    with TestClient(app, client=PROXY) as via_proxy, TestClient(app) as direct:
        api = Api.with_admin(direct, behind_proxy)
        # The proxy appends the address it saw; what the client wrote to its left is not
        # believed, and neither are the proxy's own hops.
        seen = _failed_login_from(via_proxy, api, "6.6.6.6, 203.0.113.9, 10.9.0.1")
        assert seen == "203.0.113.9"
        # A client that is not a proxy cannot choose its address.
        assert _failed_login_from(direct, api, "203.0.113.77") == "testclient"
        # Garbage stops the walk: the proxy's own address is what is known.
        assert _failed_login_from(via_proxy, api, "not-an-address") == PROXY[0]


def test_x_forwarded_proto_from_a_trusted_proxy_turns_on_hsts(
    behind_proxy: BrokerContext,
) -> None:
    app = create_app(behind_proxy)
    with TestClient(app, client=PROXY) as via_proxy, TestClient(app) as direct:
        https = {"X-Forwarded-Proto": "https"}
        assert "strict-transport-security" in via_proxy.get("/healthz", headers=https).headers
        assert "strict-transport-security" not in direct.get("/healthz", headers=https).headers


def test_metrics_need_the_metrics_token(api: Api, settings: Settings, tmp_path: Path) -> None:
    assert api.client.get("/metrics").status_code == 401
    wrong = api.client.get("/metrics", headers={"Authorization": "Bearer not-the-token-at-all"})
    assert wrong.status_code == 401
    # A user's own token is not the metrics token either.
    assert api.client.get("/metrics", headers=api.headers).status_code == 401
    token = {"Authorization": f"Bearer {settings.metrics_token}"}
    scraped = api.client.get("/metrics", headers=token)
    assert scraped.status_code == 200 and "deskbroker_logins_total" in scraped.text
    # Without a token configured, metrics are off, and say how to turn them on.
    ctx = _broker(settings, tmp_path, metrics_token="")
    try:
        with TestClient(create_app(ctx)) as client:
            off = client.get("/metrics", headers=token)
            assert off.status_code == 404
            assert "DESKBROKER_METRICS_TOKEN" in off.json()["detail"]
    finally:
        ctx.db.dispose()
    with pytest.raises(ValueError, match="16 characters"):
        Settings(data_dir=tmp_path, metrics_token="short")

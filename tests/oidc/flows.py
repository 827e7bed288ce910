"""Shortcuts for the OpenID Connect tests: sources through the admin API, sign-ins."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from fastapi.testclient import TestClient

from tests.helpers import Api
from tests.oidc.browser import Browser
from tests.oidc.provider import CLIENT_ID, CLIENT_SECRET, OidcProvider


def oidc_params(provider: OidcProvider, **extra: Any) -> dict[str, Any]:
    return {
        "issuer": provider.issuer,
        "client_id": CLIENT_ID,
        "scopes": ["openid", "profile", "email", "groups"],
        "timeout_s": 5,
        **extra,
    }


def add_oidc_source(
    api: Api,
    provider: OidcProvider,
    name: str = "corp",
    secret: str | None = CLIENT_SECRET,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "kind": "oidc",
        "params": oidc_params(provider, **extra),
        "position": 20,
    }
    if secret is not None:
        body["secrets"] = {"client_secret": secret}
    return api.post("identity-sources", body)


def start(api: Api, source: str = "corp", **query: str) -> httpx.Response:
    response = api.client.get(
        f"/api/v1/auth/oidc/{source}/start", params=query, follow_redirects=False
    )
    return response


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def callback_path(url: str) -> str:
    """The broker callback URL the provider redirected to, as a TestClient path."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


EXCHANGE = "/api/v1/auth/oidc/exchange"


def finish(api: Api, path: str, client: TestClient | None = None) -> httpx.Response:
    """Call the broker's callback as the browser that started the sign-in, then redeem
    the one-time code as the portal page does: the exchange's answer."""
    browser = client or api.client
    called = browser.get(path, follow_redirects=False)
    if called.status_code != 303:
        return called
    return browser.post(EXCHANGE)


def provider_callback(
    api: Api, username: str, password: str, *, consent: bool = True, **query: str
) -> str:
    """Start at the broker, sign in at the provider: the callback path, not yet called."""
    started = start(api, **query)
    assert started.status_code == 302, started.text
    browser = Browser()
    try:
        visit = browser.sign_in(started.headers["location"], username, password, consent=consent)
    finally:
        browser.close()
    assert visit.callback is not None, visit.page
    return callback_path(visit.callback)

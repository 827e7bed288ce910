"""OpenID Connect sign-in in Chromium lands in the portal: the portal's button sends the
browser to the provider (a real oidc-provider), the callback returns it to the portal
with a one-time code in an HttpOnly cookie, and the portal trades it for the token. No
URL the browser visits carries a token or the one-time code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deskbroker.bootstrap import add_local_user
from deskbroker.services.context import BrokerContext
from tests.browser_support import SIZES, chromium, live_broker, sync_api, watch
from tests.helpers import ADMIN_PASSWORD
from tests.identity.directories import free_port
from tests.oidc.flows import oidc_params
from tests.oidc.provider import (
    ACCOUNTS,
    BROKER_CALLBACK,
    CLIENT_SECRET,
    OidcProvider,
    running_provider,
)

expect = sync_api.expect
expect.set_options(timeout=20_000)


@pytest.fixture
def broker_and_provider(ctx: BrokerContext, tmp_path: Path) -> Iterator[tuple[str, OidcProvider]]:
    port = free_port()
    callback = f"http://127.0.0.1:{port}/api/v1/auth/oidc/callback"
    (tmp_path / "oidc").mkdir()
    with running_provider(tmp_path / "oidc", (BROKER_CALLBACK, callback)) as provider:
        add_local_user(ctx, "admin", ADMIN_PASSWORD, role="global_admin")
        with live_broker(ctx, port) as url:
            yield url, provider


def test_an_organisation_sign_in_lands_in_the_portal(
    broker_and_provider: tuple[str, OidcProvider], tmp_path: Path
) -> None:
    broker, provider = broker_and_provider
    # 30 s: a setup request, not what the test measures, on a machine CI may load.
    admin = httpx.Client(base_url=f"{broker}/api/v1", timeout=30)
    token = admin.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    admin.headers["Authorization"] = f"Bearer {token.json()['token']}"
    made = admin.post(
        "/admin/identity-sources",
        json={
            "name": "corp",
            "kind": "oidc",
            "params": oidc_params(provider),
            "secrets": {"client_secret": CLIENT_SECRET},
            "position": 20,
        },
    )
    assert made.status_code == 201, made.text
    (tmp_path / "shots").mkdir()
    with chromium() as browser:
        w = watch(browser.new_page(viewport=SIZES["phone"]), tmp_path / "shots")
        page = w.page
        visited: list[str] = []
        page.on("framenavigated", lambda frame: visited.append(frame.url))
        page.goto(f"{broker}/portal/")
        page.get_by_role("button", name="Sign in with corp").click()
        page.locator("input[name=login]").fill("ann")
        page.locator("input[name=password]").fill(ACCOUNTS["ann"]["password"])
        page.locator("button[type=submit]").first.click()
        consent = page.locator("form[action$='/confirm'] button[type=submit]")
        consent.click()
        expect(page.get_by_text("Signed in as ann")).to_be_visible()
        expect(page.get_by_role("heading", name="Your desktops")).to_be_visible()
        assert page.url == f"{broker}/portal/"  # the ?signin=oidc marker is gone
        w.shoot("portal-after-oidc")
        token = page.evaluate("sessionStorage.getItem('deskbroker.token')")
        assert token
        assert not [u for u in visited if token in u]
        cookies = {c["name"]: c for c in page.context.cookies()}
        signin = cookies.get("deskbroker_oidc_signin")
        assert signin is None or not signin["value"], "the one-time code is spent and cleared"
        # The broker's pages logged no error (the provider's own pages are not ours).
        ours = [e for e in w.errors if broker in e or e.startswith(("page error", "request to"))]
        assert not ours, ours

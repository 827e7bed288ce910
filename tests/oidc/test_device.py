"""The CLI's device flow (RFC 8628) through the broker, against a real provider: the
poll API in words, and ``deskbroker login --oidc`` as a person runs it."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from deskbroker.api.app import create_app
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import User
from tests.helpers import Api, wait_until
from tests.identity.directories import free_port
from tests.identity.sources import group_policy
from tests.oidc.browser import Browser
from tests.oidc.flows import add_oidc_source
from tests.oidc.provider import ACCOUNTS, PUBLIC_CLIENT, OidcProvider

POLL = "/api/v1/auth/oidc/device/poll"


def approve(url: str, username: str, *, consent: bool = True) -> str:
    """A person opens the verification URL, signs in and approves: the page they end on."""
    browser = Browser(stop_at="http://never.invalid/")
    try:
        visit = browser.sign_in(url, username, ACCOUNTS[username]["password"], consent=consent)
    finally:
        browser.close()
    return visit.page


def test_device_sign_in_through_the_poll_api(
    api: Api, ctx: BrokerContext, oidc_provider: OidcProvider
) -> None:
    source = add_oidc_source(api, oidc_provider)
    ids = group_policy(api, source["id"], "engineers")
    started = api.client.post("/api/v1/auth/oidc/corp/device", json={"tenant": "default"})
    assert started.status_code == 200, started.text
    grant = started.json()
    assert grant["verification_uri"] == oidc_provider.issuer + "/device"
    assert grant["user_code"] in grant["message"] and grant["interval"] >= 1

    pending = api.client.post(POLL, json={"device_handle": grant["device_handle"]})
    assert pending.status_code == 428, pending.text
    assert pending.json()["error"] == "authorization_pending"
    assert "approve the sign-in" in pending.json()["detail"]
    assert int(pending.headers["Retry-After"]) == grant["interval"]
    # Asking again at once is answered by the broker, without bothering the provider.
    hasty = api.client.post(POLL, json={"device_handle": grant["device_handle"]})
    assert hasty.status_code == 428 and hasty.json()["error"] == "slow_down"

    page = approve(grant["verification_uri_complete"], "ann")
    assert "Sign-in Success" in page or "success" in page.lower(), page
    time.sleep(grant["interval"])
    done = api.client.post(POLL, json={"device_handle": grant["device_handle"]})
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["username"] == "ann"
    with ctx.db.read() as session:
        user = session.get(User, body["user_id"])
    # The device flow binds the user to the provider's account like the portal's.
    assert user is not None and (user.oidc_issuer, user.oidc_subject) == (
        oidc_provider.issuer,
        "ann",
    )
    assert [(o["status"], o["pool_id"]) for o in body["offers"]] == [("assigned", ids["pool"])]

    again = api.client.post(POLL, json={"device_handle": grant["device_handle"]})
    assert again.status_code == 400 and "finished already" in again.json()["detail"]
    unknown = api.client.post(POLL, json={"device_handle": "not-a-handle"})
    assert unknown.status_code == 400 and "no device sign-in" in unknown.json()["detail"]


def test_a_declined_device_sign_in_is_a_403(api: Api, oidc_provider: OidcProvider) -> None:
    add_oidc_source(api, oidc_provider)
    grant = api.client.post("/api/v1/auth/oidc/corp/device", json={}).json()
    page = approve(grant["verification_uri_complete"], "carl", consent=False)
    assert "interrupted" in page, page
    time.sleep(grant["interval"])
    declined = api.client.post(POLL, json={"device_handle": grant["device_handle"]})
    assert declined.status_code == 403, declined.text
    assert "declined" in declined.json()["detail"]


@pytest.fixture
def live_broker(ctx: BrokerContext) -> Iterator[str]:
    """The broker on a real port, for the CLI in another process."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "the broker to listen", timeout_s=10, interval_s=0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_the_cli_signs_in_with_the_device_flow_and_keeps_the_token(
    api: Api, oidc_provider: OidcProvider, live_broker: str, tmp_path: Path
) -> None:
    # A public client: no secret anywhere, the device code alone.
    add_oidc_source(api, oidc_provider, name="sso", secret=None, client_id=PUBLIC_CLIENT)
    token_file = tmp_path / "cli" / "token.json"
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deskbroker.cli",
            "login",
            "--oidc",
            "sso",
            "--url",
            live_broker,
            "--token-file",
            str(token_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "400"},
        text=True,
    )
    try:
        assert cli.stdout is not None
        line = cli.stdout.readline()
        found = re.search(r"open (\S+) in a browser .* code (\S+)\.", line)
        assert found, line
        assert found.group(2) in found.group(1)
        approve(found.group(1), "ann")
        out, _ = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 0, out
    assert f"signed in as ann; token kept in {token_file}" in " ".join(out.split())
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    import json

    kept = json.loads(token_file.read_text())
    assert kept["url"] == live_broker and kept["username"] == "ann"
    me = httpx.get(
        f"{live_broker}/api/v1/client/me", headers={"Authorization": f"Bearer {kept['token']}"}
    )
    assert me.status_code == 200 and me.json()["username"] == "ann"


def test_the_cli_says_why_a_sign_in_cannot_start(live_broker: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "deskbroker.cli",
            "login",
            "--oidc",
            "nowhere",
            "--url",
            live_broker,
            "--token-file",
            str(tmp_path / "t.json"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "400"},
        timeout=60,
    )
    assert result.returncode == 1
    assert "sign-in failed: tenant 'default' has no enabled identity source 'nowhere'" in (
        result.stdout
    )
    assert not (tmp_path / "t.json").exists()

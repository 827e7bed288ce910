"""The portal's OpenID Connect sign-in (authorization code with PKCE) against a real
provider: users and groups, rules, and every way a sign-in is refused in words."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from deskbroker.api.app import create_app
from deskbroker.errors import Unauthorized
from deskbroker.identity.oidc import OidcIdentitySource
from deskbroker.services.context import BrokerContext
from deskbroker.services.oidc_signin import REPLAYED_STATE, UNKNOWN_STATE
from deskbroker.store.tables import Event, OidcFlow, User
from tests.helpers import Api
from tests.identity.directories import free_port
from tests.identity.support import group_policy
from tests.oidc.browser import Browser
from tests.oidc.provider import (
    ACCOUNTS,
    BROKER_CALLBACK,
    OTHER_CLIENT,
    SHORT_LIVED_CLIENT,
    OidcProvider,
)
from tests.oidc.support import (
    add_oidc_source,
    callback_path,
    oidc_params,
    provider_callback,
    query_of,
    start,
)

ANN = ("ann", ACCOUNTS["ann"]["password"])


def events(ctx: BrokerContext, kind: str) -> list[Event]:
    with ctx.db.read() as session:
        return list(session.scalars(select(Event).where(Event.kind == kind)))


def test_sign_in_creates_the_user_with_groups_and_a_group_rule_picks_the_policy(
    api: Api, ctx: BrokerContext, oidc_provider: OidcProvider
) -> None:
    source = add_oidc_source(api, oidc_provider)
    assert source["has_secrets"] and "client_secret" not in str(source)
    ids = group_policy(api, source["id"], "engineers")
    group_policy(api, source["id"], "sales", tag="s-")

    started = start(api, tenant="default")
    assert started.status_code == 302, started.text
    sent = query_of(started.headers["location"])
    assert started.headers["location"].startswith(oidc_provider.issuer + "/auth?")
    assert sent["code_challenge_method"] == "S256" and len(sent["code_challenge"]) == 43
    assert sent["redirect_uri"] == BROKER_CALLBACK
    assert sent["state"] and sent["nonce"] and sent["state"] != sent["nonce"]
    with ctx.db.read() as session:
        flow = session.scalars(select(OidcFlow)).one()
    # The table alone cannot finish a sign-in: the state is hashed, the verifier sealed.
    assert sent["state"] not in flow.id and "code_verifier" not in flow.sealed

    browser = Browser()
    visit = browser.sign_in(started.headers["location"], *ANN)
    browser.close()
    assert visit.callback is not None
    response = api.client.get(callback_path(visit.callback))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["username"] == "ann" and body["role"] == "user"
    assert [(o["status"], o["pool_id"]) for o in body["offers"]] == [("assigned", ids["pool"])]

    user = api.get(f"users?username=ann&identity_source_id={source['id']}")["items"][0]
    assert user["display_name"] == "Ann Archer" and user["email"] == "ann@example.org"
    assert sorted(user["groups"]) == ["engineers", "staff"]
    assert not user["has_password"]
    me = api.client.get("/api/v1/client/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.json()["user_id"] == user["id"]
    assert [e.actor for e in events(ctx, "login")][-1] == "ann"

    # Carl's group has another rule, so another policy; a second sign-in is a new state.
    carl = provider_callback(api, "carl", ACCOUNTS["carl"]["password"])
    carl_body = api.client.get(carl).json()
    assert carl_body["offers"][0]["pool_name"] == "s-sales-pool"


def test_the_portal_gets_the_token_in_its_page_fragment(
    api: Api, oidc_provider: OidcProvider
) -> None:
    add_oidc_source(api, oidc_provider)
    path = provider_callback(api, *ANN, redirect="/portal/desktops")
    response = api.client.get(path, follow_redirects=False)
    assert response.status_code == 303, response.text
    page, _, fragment = response.headers["location"].partition("#")
    assert page == "/portal/desktops"
    token = query_of("?" + fragment)["token"]
    me = api.client.get("/api/v1/client/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["username"] == "ann"

    # Never to another site: the token would leave the broker.
    for elsewhere in ("https://evil.example/", "//evil.example/", "portal"):
        refused = start(api, redirect=elsewhere)
        assert refused.status_code == 400
        assert "path on this broker" in refused.json()["detail"]


def test_replayed_and_tampered_state_are_refused(
    api: Api, ctx: BrokerContext, oidc_provider: OidcProvider
) -> None:
    add_oidc_source(api, oidc_provider)
    path = provider_callback(api, *ANN)
    state = query_of(path)["state"]

    tampered = api.client.get(
        path.replace(state, state[:-2] + ("AA" if state[-2:] != "AA" else "BB"))
    )
    assert tampered.status_code == 400
    assert tampered.json()["detail"] == UNKNOWN_STATE
    assert api.client.get("/api/v1/auth/oidc/callback?code=x").status_code == 400

    assert api.client.get(path).status_code == 200
    replayed = api.client.get(path)
    assert replayed.status_code == 400
    assert replayed.json()["detail"] == REPLAYED_STATE
    assert events(ctx, "login_failed")[-1].detail["reason"] == "state_replayed"

    # An expired state: the row says so, and the sign-in is refused in words.
    late = provider_callback(api, *ANN)
    with ctx.db.write() as session:
        session.execute(update(OidcFlow).values(expires_at=OidcFlow.created_at))
    expired = api.client.get(late)
    assert expired.status_code == 400 and "expired" in expired.json()["detail"]


def test_a_code_from_another_sign_in_fails_pkce_and_a_wrong_nonce_fails(
    api: Api, ctx: BrokerContext, oidc_provider: OidcProvider
) -> None:
    add_oidc_source(api, oidc_provider)
    # An attacker's code injected into the victim's callback: the victim's PKCE verifier
    # does not match the attacker's challenge, so the provider refuses the exchange.
    attacker = query_of(provider_callback(api, "carl", ACCOUNTS["carl"]["password"]))
    victim_state = query_of(start(api).headers["location"])["state"]
    injected = api.client.get(
        "/api/v1/auth/oidc/callback", params={"code": attacker["code"], "state": victim_state}
    )
    assert injected.status_code == 400, injected.text
    assert "did not accept the sign-in's code" in injected.json()["detail"]

    # An ID token minted for another sign-in (its nonce differs): refused.
    path = provider_callback(api, *ANN)
    with ctx.db.write() as session:
        session.execute(update(OidcFlow).values(nonce="a-nonce-of-another-sign-in"))
    response = api.client.get(path)
    assert response.status_code == 401, response.text
    assert "nonce does not match" in response.json()["detail"]
    with ctx.db.read() as session:
        assert session.scalars(select(User).where(User.username == "ann")).first() is None
    assert events(ctx, "login_failed")[-1].detail["reason"] == "oidc_refused"


def test_the_provider_saying_no_is_reported(api: Api, oidc_provider: OidcProvider) -> None:
    add_oidc_source(api, oidc_provider)
    declined = api.client.get(provider_callback(api, *ANN, consent=False))
    assert declined.status_code == 403, declined.text
    assert declined.json()["detail"].startswith("the identity provider did not sign you in")
    assert "access_denied" in declined.json()["detail"]


def _tokens_for(provider: OidcProvider, client_id: str, secret: str, **extra: object) -> tuple:
    """A real ID token the provider issued to ``client_id``, through the broker's driver."""
    from deskbroker.security import PasswordHashing
    from deskbroker.services.oidc_signin import _challenge

    driver = OidcIdentitySource(
        oidc_params(provider, client_id=client_id, **extra),
        {"client_secret": secret},
        PasswordHashing(1, 64, 1),
    )
    url = driver.authorization_url(
        state="s" * 20,
        nonce="the-nonce",
        code_challenge=_challenge("v" * 50),
        redirect_uri=BROKER_CALLBACK,
    )
    browser = Browser()
    visit = browser.sign_in(url, *ANN)
    browser.close()
    assert visit.callback is not None
    tokens = driver.exchange_code(
        code=query_of(visit.callback)["code"], code_verifier="v" * 50, redirect_uri=BROKER_CALLBACK
    )
    return driver, tokens


def test_tokens_for_another_audience_or_expired_are_refused(oidc_provider: OidcProvider) -> None:
    from deskbroker.security import PasswordHashing

    broker = OidcIdentitySource(
        oidc_params(oidc_provider), {"client_secret": "x"}, PasswordHashing(1, 64, 1)
    )
    _, other = _tokens_for(oidc_provider, OTHER_CLIENT, "other-app-secret-0123456789abcdef")
    try:
        broker.verify_id_token(other.id_token, "the-nonce")
        raise AssertionError("a token for another client was accepted")
    except Unauthorized as exc:
        assert "issued to another client" in exc.detail

    short, tokens = _tokens_for(
        oidc_provider, SHORT_LIVED_CLIENT, "short-lived-secret-0123456789abcd", clock_skew_s=0
    )
    assert short.verify_id_token(tokens.id_token, "the-nonce")["sub"] == "ann"
    try:
        short.verify_id_token(tokens.id_token, "another-nonce")
        raise AssertionError("a wrong nonce was accepted")
    except Unauthorized as exc:
        assert "nonce" in exc.detail
    time.sleep(2.2)
    try:
        short.sign_in(tokens, "the-nonce")
        raise AssertionError("an expired token was accepted")
    except Unauthorized as exc:
        assert exc.detail == "the ID token has expired; sign in again"
    broker.close()
    short.close()


def test_a_provider_that_is_down_is_a_503_in_words(api: Api, ctx: BrokerContext) -> None:
    down = OidcProvider(f"http://127.0.0.1:{free_port()}", None)  # type: ignore[arg-type]
    add_oidc_source(api, down)
    response = start(api)
    assert response.status_code == 503, response.text
    assert response.json()["title"] == "Identity provider unreachable"
    assert "did not answer" in response.json()["detail"]
    device = api.client.post("/api/v1/auth/oidc/corp/device", json={})
    assert device.status_code == 503
    with ctx.db.read() as session:
        assert session.scalars(select(OidcFlow)).first() is None


def test_passwords_are_refused_with_a_pointer_to_the_sign_in(
    api: Api, oidc_provider: OidcProvider
) -> None:
    add_oidc_source(api, oidc_provider)
    named = api.client.post(
        "/api/v1/auth/login", json={"username": "ann", "password": "x" * 10, "source": "corp"}
    )
    assert named.status_code == 400, named.text
    assert "/api/v1/auth/oidc/corp/start" in named.json()["detail"]
    # With the local source beside it, a wrong password is still just a wrong password.
    wrong = api.client.post("/api/v1/auth/login", json={"username": "ann", "password": "x" * 10})
    assert wrong.status_code == 401
    # And an OIDC sign-in at a password source is refused too.
    local = api.client.get("/api/v1/auth/oidc/local/start", follow_redirects=False)
    assert local.status_code == 400 and "POST /api/v1/auth/login" in local.json()["detail"]


def test_tenants_do_not_see_each_others_sources(api: Api, oidc_provider: OidcProvider) -> None:
    add_oidc_source(api, oidc_provider)
    api.post("tenants", {"name": "acme"})
    response = start(api, tenant="acme")
    assert response.status_code == 404
    assert "tenant 'acme' has no enabled identity source 'corp'" in response.json()["detail"]


def test_another_broker_finishes_what_one_started(
    api: Api, ctx: BrokerContext, oidc_provider: OidcProvider
) -> None:
    add_oidc_source(api, oidc_provider, username_claim="email")
    path = provider_callback(api, "nina", ACCOUNTS["nina"]["password"])
    other = BrokerContext.from_settings(ctx.settings)
    try:
        with TestClient(create_app(other)) as second:
            response = second.get(path)
    finally:
        other.db.dispose()
    assert response.status_code == 200, response.text
    assert response.json()["username"] == "nina@example.org"

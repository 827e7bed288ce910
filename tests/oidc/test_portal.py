"""The portal's OpenID Connect sign-in (authorization code with PKCE) against a real
provider: users and groups, rules, and every way a sign-in is refused in words."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select, update

from deskbroker.api.app import create_app
from deskbroker.api.client.oidc import BROWSER_COOKIE, HANDOFF_COOKIE
from deskbroker.config import Settings
from deskbroker.errors import Unauthorized
from deskbroker.identity.oidc import OidcIdentitySource
from deskbroker.services.context import BrokerContext
from deskbroker.services.oidc_signin import (
    OTHER_BROWSER,
    REPLAYED_STATE,
    UNKNOWN_HANDOFF,
    UNKNOWN_STATE,
)
from deskbroker.store.tables import Event, OidcFlow, User
from tests.helpers import Api
from tests.identity.directories import free_port
from tests.identity.sources import group_policy
from tests.oidc.browser import Browser
from tests.oidc.flows import (
    EXCHANGE,
    add_oidc_source,
    callback_path,
    finish,
    oidc_params,
    provider_callback,
    query_of,
    start,
)
from tests.oidc.provider import (
    ACCOUNTS,
    BROKER_CALLBACK,
    OTHER_CLIENT,
    SHORT_LIVED_CLIENT,
    OidcProvider,
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
    response = finish(api, callback_path(visit.callback))
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
    carl_body = finish(api, carl).json()
    assert carl_body["offers"][0]["pool_name"] == "s-sales-pool"


def test_the_whole_redirect_chain_carries_no_token(
    api: Api, client: TestClient, oidc_provider: OidcProvider
) -> None:
    add_oidc_source(api, oidc_provider)
    # One browser, one cookie jar, from the portal's button to the portal page.
    browser = Browser(stop_at="http://testserver/portal/", broker=client)
    try:
        visit = browser.sign_in(
            "http://testserver/api/v1/auth/oidc/corp/start?redirect=/portal/desktops", *ANN
        )
        assert visit.callback == "http://testserver/portal/desktops", browser.history
        # The portal page redeems the sign-in: same origin, the browser's cookies.
        browser.history.append(f"http://testserver{EXCHANGE}")
        redeemed = browser.http.post(f"http://testserver{EXCHANGE}")
    finally:
        browser.close()
    assert redeemed.status_code == 200, redeemed.text
    token = redeemed.json()["token"]
    me = api.client.get("/api/v1/client/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["username"] == "ann"

    chain = " ".join(browser.history)
    assert "/api/v1/auth/oidc/callback?" in chain and "/portal/desktops" in chain
    assert token not in chain
    for leak in (token.split(".")[0], "token=", "id_token", "access_token", "#"):
        assert leak not in chain, (leak, browser.history)
    # The one-time code rode in an HttpOnly cookie, not in the URL; it is gone now.
    assert "Set-Cookie" not in redeemed.headers or "Max-Age=0" in redeemed.headers["set-cookie"]


def test_redirect_is_limited_to_portal_pages(
    api: Api, ctx: BrokerContext, oidc_provider: OidcProvider
) -> None:
    add_oidc_source(api, oidc_provider)
    add_oidc_source(api, oidc_provider, name="other")
    refused = start(api, redirect="/api/v1/auth/oidc/other/start")
    assert refused.status_code == 400, refused.text
    assert refused.json()["detail"] == (
        "redirect '/api/v1/auth/oidc/other/start' is an API route, not a portal page: a "
        "sign-in only goes back to a page under /portal/"
    )
    for elsewhere in (
        "https://evil.example/portal/",
        "//evil.example/portal/",
        "/\\evil.example/portal/",
        "portal/",
        "/portal/../api/v1/auth/oidc/other/start",
        "/portal/%2e%2e/api/v1/",
        "/portal/x#y",
        "/API/v1/client/me",
        "/elsewhere/",
        "/portalx",
        "/portal/ x",
    ):
        answer = start(api, redirect=elsewhere)
        assert answer.status_code == 400, (elsewhere, answer.text)
        assert "portal" in answer.json()["detail"], answer.text
    with ctx.db.read() as session:
        assert session.scalars(select(OidcFlow)).first() is None
    for fine in ("/portal/", "/portal", "/portal/desktops?view=list&x=%20"):
        assert start(api, redirect=fine).status_code == 302, fine


def test_the_portal_folders_are_a_setting(
    settings: Settings, ctx: BrokerContext, oidc_provider: OidcProvider
) -> None:
    desk_settings = settings.model_copy(update={"oidc_portal_paths": ["/desk/"]})
    desk = BrokerContext.from_settings(desk_settings)
    try:
        with TestClient(create_app(desk)) as client:
            api = Api.with_admin(client, desk)
            add_oidc_source(api, oidc_provider)
            assert start(api, redirect="/desk/home").status_code == 302
            # The default page is the first folder.
            path = provider_callback(api, *ANN)
            back = client.get(path, follow_redirects=False)
            assert back.status_code == 303 and back.headers["location"] == "/desk/"
            portal = start(api, redirect="/portal/")
            assert portal.status_code == 400 and "under /desk/" in portal.json()["detail"]
    finally:
        desk.db.dispose()
    for bad in (["/api/v1/"], ["/"], ["portal/"], ["/portal"], ["/a/../api/"]):
        try:
            Settings(data_dir=settings.data_dir, oidc_portal_paths=bad)
            raise AssertionError(f"{bad} was accepted")
        except ValidationError as exc:
            assert "oidc_portal_paths" in str(exc)


def test_a_callback_in_another_browser_is_refused(
    api: Api, ctx: BrokerContext, client: TestClient, oidc_provider: OidcProvider
) -> None:
    add_oidc_source(api, oidc_provider)
    # The attacker's own sign-in, its callback URL sent to a victim (login CSRF).
    path = provider_callback(api, *ANN)
    with TestClient(client.app) as victim:
        refused = victim.get(path, follow_redirects=False)
        assert refused.status_code == 400, refused.text
        assert refused.json()["detail"] == OTHER_BROWSER
        victim.cookies.set(BROWSER_COOKIE, "x" * 43, domain="testserver.local")
        forged = victim.get(path, follow_redirects=False)
        assert forged.status_code == 400 and forged.json()["detail"] == OTHER_BROWSER
    assert events(ctx, "login_failed")[-1].detail["reason"] == "browser_mismatch"
    with ctx.db.read() as session:
        assert session.scalars(select(User).where(User.username == "ann")).first() is None
    # The browser that started it still finishes it: the refusals consumed nothing.
    assert finish(api, path).status_code == 200


def test_a_sign_in_code_is_redeemed_once(
    api: Api, ctx: BrokerContext, oidc_provider: OidcProvider
) -> None:
    add_oidc_source(api, oidc_provider)
    called = api.client.get(provider_callback(api, *ANN), follow_redirects=False)
    assert called.status_code == 303, called.text
    assert called.headers["location"] == "/portal/"
    cookie = called.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Path=/api/v1/auth/oidc/exchange" in cookie
    code = api.client.cookies[HANDOFF_COOKIE]
    with ctx.db.read() as session:
        handoff = session.scalars(select(OidcFlow).where(OidcFlow.kind == "handoff")).one()
    # Stored hashed, the answer sealed: the table alone redeems nothing.
    assert code not in handoff.id and "token" not in handoff.sealed

    first = api.client.post(EXCHANGE)
    assert first.status_code == 200 and first.json()["username"] == "ann"
    assert HANDOFF_COOKIE not in api.client.cookies
    with ctx.db.read() as session:
        assert session.get(OidcFlow, handoff.id).sealed == ""  # type: ignore[union-attr]
    api.client.cookies.set(HANDOFF_COOKIE, code)
    again = api.client.post(EXCHANGE)
    assert again.status_code == 400 and again.json()["detail"] == UNKNOWN_HANDOFF
    api.client.cookies.delete(HANDOFF_COOKIE)
    assert api.client.post(EXCHANGE).status_code == 400

    # A code not redeemed within its minute is refused too.
    api.client.get(provider_callback(api, *ANN), follow_redirects=False)
    with ctx.db.write() as session:
        session.execute(
            update(OidcFlow)
            .where(OidcFlow.kind == "handoff")
            .values(expires_at=OidcFlow.created_at)
        )
    late = api.client.post(EXCHANGE)
    assert late.status_code == 400 and late.json()["detail"] == UNKNOWN_HANDOFF


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

    assert finish(api, path).status_code == 200
    replayed = api.client.get(path, follow_redirects=False)
    assert replayed.status_code == 400
    assert replayed.json()["detail"] == REPLAYED_STATE
    assert events(ctx, "login_failed")[-1].detail["reason"] == "state_replayed"

    # An expired state: the row says so, and the sign-in is refused in words.
    late = provider_callback(api, *ANN)
    with ctx.db.write() as session:
        session.execute(update(OidcFlow).values(expires_at=OidcFlow.created_at))
    expired = api.client.get(late, follow_redirects=False)
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
    add_oidc_source(api, oidc_provider, username_claim="email", trust_verified_email=True)
    path = provider_callback(api, "nina", ACCOUNTS["nina"]["password"])
    other = BrokerContext.from_settings(ctx.settings)
    try:
        # The same browser (its cookies) reaches another broker of the cluster for the
        # callback, and the first one again for the exchange.
        with TestClient(create_app(other), cookies=api.client.cookies) as second:
            called = second.get(path, follow_redirects=False)
    finally:
        other.db.dispose()
    assert called.status_code == 303, called.text
    code = called.cookies[HANDOFF_COOKIE]
    api.client.cookies.set(HANDOFF_COOKIE, code)
    response = api.client.post(EXCHANGE)
    assert response.status_code == 200, response.text
    assert response.json()["username"] == "nina@example.org"


def test_the_binding_cookie_follows_the_provider_back_and_is_secure_over_https(
    api: Api, oidc_provider: OidcProvider
) -> None:
    add_oidc_source(api, oidc_provider)
    started = start(api)
    cookie = started.headers["set-cookie"]
    # Lax, not Strict: the provider's redirect back to the callback is a cross-site
    # navigation, which a Strict cookie would not follow.
    assert cookie.startswith(f"{BROWSER_COOKIE}=") and "HttpOnly" in cookie
    assert "SameSite=lax" in cookie and "Path=/api/v1/auth/oidc/" in cookie
    assert "Secure" not in cookie  # this broker is reached over http
    # Two sign-ins in two tabs share the browser's secret, so both can finish.
    again = start(api)
    assert again.cookies[BROWSER_COOKIE] == started.cookies[BROWSER_COOKIE]

    add_oidc_source(
        api,
        oidc_provider,
        name="tls",
        redirect_uri="https://broker.example.org/api/v1/auth/oidc/callback",
    )
    over_https = start(api, source="tls")
    assert over_https.status_code == 302, over_https.text
    assert "Secure" in over_https.headers["set-cookie"]

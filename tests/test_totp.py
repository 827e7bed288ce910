"""TOTP second factor through the HTTP API, with real codes computed from the secret."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from deskbroker.bootstrap import add_local_user
from deskbroker.domain.second_factor import SecondFactorStep
from deskbroker.services.challenges import ChallengeSigner
from deskbroker.store.tables import Base, Event, User
from tests.authenticator import Authenticator
from tests.helpers import ADMIN_PASSWORD, USER_PASSWORD, Api, bearer

LOGIN = "/api/v1/auth/login"
LOGIN_TOTP = "/api/v1/auth/login/totp"
ENROL_AT_LOGIN = "/api/v1/auth/login/totp/enrol"
ME_TOTP = "/api/v1/me/totp"


def set_mode(api: Api, mode: str, source_id: str | None = None) -> None:
    body = api.patch(f"identity-sources/{source_id or api.source_id()}", {"second_factor": mode})
    assert body["second_factor"] == mode


def login(client: TestClient, username: str, status: int, **extra: Any) -> dict[str, Any]:
    response = client.post(LOGIN, json={"username": username, "password": USER_PASSWORD, **extra})
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def finish(client: TestClient, challenge: str, code: str, status: int = 200) -> dict[str, Any]:
    response = client.post(LOGIN_TOTP, json={"challenge": challenge, "code": code})
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def enrol(client: TestClient, token: str) -> Authenticator:
    """A logged-in user adds an app and confirms it with its first code."""
    started = client.post(ME_TOTP, headers=bearer(token))
    assert started.status_code == 201, started.text
    app = Authenticator(started.json()["secret"])
    confirmed = client.post(f"{ME_TOTP}/confirm", json={"code": app.code()}, headers=bearer(token))
    assert confirmed.status_code == 204, confirmed.text
    return app


def enrolled_user(api: Api, name: str) -> Authenticator:
    add_local_user(api.ctx, name, USER_PASSWORD)
    return enrol(api.client, login(api.client, name, 200)["token"])


def logins(api: Api, user_id: str) -> int:
    with api.ctx.db.read() as session:
        kinds = session.scalars(select(Event.kind).where(Event.user_id == user_id)).all()
    return kinds.count("login")


def failures(api: Api) -> list[dict[str, Any]]:
    with api.ctx.db.read() as session:
        rows = session.execute(
            select(Event.actor, Event.detail).where(Event.kind == "login_failed").order_by(Event.id)
        ).all()
    return [{"actor": a, **d} for a, d in rows]


@pytest.fixture
def optional(api: Api) -> Api:
    api.seed_pool(3)
    set_mode(api, "optional")
    return api


def test_enrol_confirm_and_login_needs_the_code(optional: Api) -> None:
    api, client = optional, optional.client
    add_local_user(api.ctx, "alice", USER_PASSWORD)
    token = login(client, "alice", 200)["token"]
    started = client.post(ME_TOTP, headers=bearer(token))
    assert started.status_code == 201, started.text
    enrolment = started.json()
    uri = pyotp.parse_uri(enrolment["uri"])
    assert enrolment["uri"].startswith("otpauth://totp/")
    assert uri.secret == enrolment["secret"] and uri.issuer == "deskbroker"
    assert uri.name == "alice (default)" and enrolment["digits"] == 6
    # Pending until confirmed: the next login still needs only the password.
    assert "token" in login(client, "alice", 200)
    app = Authenticator(enrolment["secret"])
    wrong = client.post(f"{ME_TOTP}/confirm", json={"code": app.wrong()}, headers=bearer(token))
    assert wrong.status_code == 422 and wrong.json()["detail"].startswith("Wrong one-time code.")
    confirmed = client.post(f"{ME_TOTP}/confirm", json={"code": app.code()}, headers=bearer(token))
    assert confirmed.status_code == 204, confirmed.text
    again = client.post(ME_TOTP, headers=bearer(token))
    assert again.status_code == 409 and "remove it first" in again.json()["detail"]
    user = api.get("users?username=alice")["items"][0]
    assert user["totp_enrolled"] is True

    logins_before = logins(api, user["id"])
    needed = login(client, "alice", 202)
    assert needed["status"] == "second_factor_needed" and needed["enrol"] is False
    assert "token" not in needed and needed["username"] == "alice"
    assert needed["message"] == "Give the one-time code your authenticator app shows."
    # The login is not done until the code is given: no login event, no claim.
    assert logins(api, user["id"]) == logins_before
    # The challenge opens no endpoint.
    refused = client.get("/api/v1/client/me", headers=bearer(needed["challenge"]))
    assert refused.status_code == 401

    code = app.code()
    done = finish(client, needed["challenge"], f"{code[:3]} {code[3:]}")  # as the app shows it
    assert done["username"] == "alice" and done["token_type"] == "bearer"
    assert done["offers"][0]["status"] == "assigned"
    me = client.get("/api/v1/client/me", headers=bearer(done["token"]))
    assert me.status_code == 200 and me.json()["user_id"] == user["id"]
    assert logins(api, user["id"]) == logins_before + 1
    with api.ctx.db.read() as session:
        kinds = session.scalars(select(Event.kind).where(Event.user_id == user["id"])).all()
    assert kinds.count("totp_enrolled") == 1


def test_wrong_and_replayed_codes_are_login_failures(optional: Api) -> None:
    api, client = optional, optional.client
    app = enrolled_user(api, "bob")
    challenge = login(client, "bob", 202)["challenge"]
    wrong = finish(client, challenge, app.wrong(), status=401)
    assert wrong["detail"] == "Wrong one-time code."
    assert wrong["reason"] == "wrong_second_factor"
    code = app.code()
    assert finish(client, challenge, code)["username"] == "bob"
    # The same code again, on a new login: refused, though it is in the window.
    challenge = login(client, "bob", 202)["challenge"]
    replayed = finish(client, challenge, code, status=401)
    assert replayed["detail"] == "This one-time code was already used; wait for the next one."
    # The challenge survives a wrong try; the next code of the app completes it.
    assert finish(client, challenge, app.code())["username"] == "bob"
    # Single use: a completed challenge does not complete again, whatever the code.
    spent = finish(client, challenge, app.wrong(), status=401)
    assert spent["detail"].startswith("This login challenge was used up or has expired")
    assert [(f["actor"], f["reason"]) for f in failures(api)] == [
        ("bob", "wrong_second_factor"),
        ("bob", "replayed_second_factor"),
    ]


def test_wrong_codes_lock_the_account_like_wrong_passwords(optional: Api) -> None:
    api, client = optional, optional.client
    app = enrolled_user(api, "lena")
    challenge = login(client, "lena", 202)["challenge"]
    for _ in range(4):
        assert finish(client, challenge, app.wrong(), status=401)["reason"] == (
            "wrong_second_factor"
        )
    locked = finish(client, challenge, app.wrong(), status=429)
    assert locked["reason"] == "account_locked_out"
    # Locked: neither a right code nor the password goes through.
    assert finish(client, challenge, app.code(), status=429)["reason"] == "account_locked_out"
    login(client, "lena", 429)
    lena = api.get("users?username=lena")["items"][0]["id"]
    assert api.post(f"users/{lena}/unlock", {}, status=200)["unlocked"] is True
    assert finish(client, login(client, "lena", 202)["challenge"], app.code())["token"]


def test_a_challenge_takes_five_wrong_codes(optional: Api) -> None:
    api, client = optional, optional.client
    # Above the account's lockout, to see the challenge's own limit.
    api.ctx.settings.login_max_failures_per_account = 50
    app = enrolled_user(api, "carol")
    challenge = login(client, "carol", 202)["challenge"]
    for attempt in range(5):
        detail = finish(client, challenge, app.wrong(), status=401)["detail"]
        assert detail.startswith("Wrong one-time code.")
        assert ("last try" in detail) == (attempt == 4)
    # Even the right code now needs a new password login.
    finish(client, challenge, app.code(), status=401)
    assert len(failures(api)) == 5
    assert finish(client, login(client, "carol", 202)["challenge"], app.code())["token"]


def test_expired_forged_and_other_users_challenges(optional: Api) -> None:
    api, client = optional, optional.client
    alice, bob = enrolled_user(api, "alice"), enrolled_user(api, "bob")
    alices = login(client, "alice", 202)["challenge"]
    bobs = login(client, "bob", 202)["challenge"]
    # Bob's challenge takes Bob's codes only: Alice's right code is a wrong one for it.
    code = alice.code()
    assert finish(client, bobs, code, status=401)["detail"] == "Wrong one-time code."
    assert finish(client, alices, code)["username"] == "alice"
    assert finish(client, bobs, bob.code())["username"] == "bob"

    fresh = login(client, "alice", 202)["challenge"]
    head, payload, signature = fresh.split(".")
    other_key = ChallengeSigner("another broker").issue(
        user_id="x",
        username="alice",
        tenant_id="t",
        source_id="s",
        step=SecondFactorStep.CODE,
        ttl_s=60,
    )[0]
    admin_token = api.token
    for forged in (
        f"{head}.{payload}.{signature[:-3]}AAA",
        f"{head}.{payload[:-4]}abcd.{signature}",
        other_key,
        admin_token,  # a bearer token is no challenge
        "not-a-challenge",
    ):
        answer = finish(client, forged, "123456", status=401)
        assert (
            answer["detail"]
            == "This login challenge is not valid; log in again with your password."
        )
    # The one real challenge still works after all that.
    assert finish(client, fresh, alice.code())["username"] == "alice"

    api.ctx.settings.second_factor_challenge_ttl_s = 1
    stale = login(client, "alice", 202)["challenge"]
    time.sleep(2.1)
    answer = finish(client, stale, "123456", status=401)
    assert answer["detail"] == (
        "This login waited too long for its one-time code; log in again with your password."
    )


def test_required_mode_enrols_on_first_login(api: Api) -> None:
    api.seed_pool(2)
    set_mode(api, "required")
    add_local_user(api.ctx, "dave", USER_PASSWORD)
    client = api.client
    needed = login(client, "dave", 202)
    assert needed["enrol"] is True and "token" not in needed
    assert "POST /api/v1/auth/login/totp/enrol" in needed["message"]
    early = finish(client, needed["challenge"], "123456", status=409)
    assert early["detail"].startswith("Enrol an authenticator app first")
    started = client.post(ENROL_AT_LOGIN, json={"challenge": needed["challenge"]})
    assert started.status_code == 200, started.text
    app = Authenticator(started.json()["secret"])
    assert pyotp.parse_uri(started.json()["uri"]).secret == app.secret
    assert finish(client, needed["challenge"], app.wrong(), status=401)["reason"] == (
        "wrong_second_factor"
    )
    done = finish(client, needed["challenge"], app.code())
    assert done["username"] == "dave" and done["offers"][0]["status"] == "assigned"
    assert api.get("users?username=dave")["items"][0]["totp_enrolled"] is True
    # From now on a code, not an enrolment.
    again = login(client, "dave", 202)
    assert again["enrol"] is False
    refused = client.post(ENROL_AT_LOGIN, json={"challenge": again["challenge"]})
    assert refused.status_code == 409, refused.text
    assert finish(client, again["challenge"], app.code())["username"] == "dave"


def test_optional_mode_lets_a_user_without_an_app_straight_in(optional: Api) -> None:
    api, client = optional, optional.client
    add_local_user(api.ctx, "erin", USER_PASSWORD)
    done = login(client, "erin", 200)
    assert done["token"] and done["offers"][0]["status"] == "assigned"
    # Off: nobody is asked, enrolled or not, and nobody can enrol.
    app = enrolled_user(api, "frank")
    set_mode(api, "off")
    assert login(client, "frank", 200)["token"]
    refused = client.post(ME_TOTP, headers=bearer(done["token"]))
    assert refused.status_code == 409
    assert refused.json()["detail"].startswith("Your identity source does not use a second")
    set_mode(api, "optional")
    assert finish(client, login(client, "frank", 202)["challenge"], app.code())["token"]


def test_the_setting_is_validated_and_shown(api: Api) -> None:
    source = api.source_id()
    assert api.get(f"identity-sources/{source}")["second_factor"] == "off"
    bad = api.patch(f"identity-sources/{source}", {"second_factor": "sometimes"}, status=422)
    assert "second_factor" in bad["detail"] and "'optional'" in bad["detail"]
    made = api.post(
        "identity-sources", {"name": "corp", "kind": "local", "second_factor": "required"}
    )
    assert made["second_factor"] == "required"
    assert api.get("identity-sources?name=corp")["items"][0]["second_factor"] == "required"
    # An OpenID provider runs its own second factor; the broker asks for no code there.
    sso = {"issuer": "https://sso.example.org", "client_id": "deskbroker"}
    refused = api.post(
        "identity-sources",
        {"name": "sso", "kind": "oidc", "params": sso, "second_factor": "optional"},
        status=422,
    )
    assert "cannot ask for one-time codes" in refused["detail"]
    made = api.post("identity-sources", {"name": "sso", "kind": "oidc", "params": sso})
    assert made["second_factor"] == "off"
    api.patch(f"identity-sources/{made['id']}", {"second_factor": "required"}, status=422)


def test_removing_your_own_app_needs_a_code(optional: Api) -> None:
    api, client = optional, optional.client
    app = enrolled_user(api, "gina")
    token = finish(client, login(client, "gina", 202)["challenge"], app.code())["token"]
    wrong = client.request("DELETE", ME_TOTP, json={"code": app.wrong()}, headers=bearer(token))
    assert wrong.status_code == 422 and wrong.json()["detail"].startswith("Wrong one-time code.")
    missing = client.request("DELETE", ME_TOTP, json={}, headers=bearer(token))
    assert missing.status_code == 422 and missing.json()["detail"] == "code is required"
    removed = client.request("DELETE", ME_TOTP, json={"code": app.code()}, headers=bearer(token))
    assert removed.status_code == 204, removed.text
    assert login(client, "gina", 200)["token"]
    assert api.get("users?username=gina")["items"][0]["totp_enrolled"] is False
    again = client.request("DELETE", ME_TOTP, json={"code": "123456"}, headers=bearer(token))
    assert again.status_code == 409


def test_a_stolen_session_cannot_try_every_code_to_remove_the_app(optional: Api) -> None:
    api, client = optional, optional.client
    app = enrolled_user(api, "ivan")
    token = finish(client, login(client, "ivan", 202)["challenge"], app.code())["token"]
    answers = [
        client.request(
            "DELETE", ME_TOTP, json={"code": app.wrong()}, headers=bearer(token)
        ).status_code
        for _ in range(5)
    ]
    # Wrong codes count like wrong passwords: the fifth locks the account.
    assert answers == [422, 422, 422, 422, 429]
    right = client.request("DELETE", ME_TOTP, json={"code": app.code()}, headers=bearer(token))
    assert right.status_code == 429 and "locked" in right.json()["detail"]
    assert api.get("users?username=ivan")["items"][0]["totp_enrolled"] is True


def test_admin_reset(optional: Api) -> None:
    api, client = optional, optional.client
    enrolled_user(api, "hank")
    pending = login(client, "hank", 202)["challenge"]
    user_id = api.get("users?username=hank")["items"][0]["id"]
    api.delete(f"users/{user_id}/totp")
    assert api.get(f"users/{user_id}")["totp_enrolled"] is False
    # A login that waited for the old app's code waits no more.
    assert finish(client, pending, "123456", status=401)["detail"].startswith(
        "This login challenge was used up"
    )
    assert login(client, "hank", 200)["token"]
    with api.ctx.db.read() as session:
        event = session.execute(
            select(Event.actor, Event.detail).where(Event.kind == "admin.totp_reset")
        ).one()
    assert event[0] == "admin" and event[1]["id"] == user_id and event[1]["name"] == "hank"
    api.delete("users/does-not-exist/totp", status=404)
    # The user can enrol a new app afterwards.
    enrol(client, login(client, "hank", 200)["token"])
    assert login(client, "hank", 202)["enrol"] is False


def test_a_tenant_admin_cannot_reset_another_tenants_user(optional: Api) -> None:
    api, client = optional, optional.client
    enrolled_user(api, "ivan")
    ivan = api.get("users?username=ivan")["items"][0]["id"]
    add_local_user(api.ctx, "boss-b", ADMIN_PASSWORD, role="tenant_admin", tenant_name="b")
    add_local_user(api.ctx, "worker-b", USER_PASSWORD, tenant_name="b")
    api.ctx.cache.invalidate()
    boss = client.post(
        LOGIN, json={"username": "boss-b", "password": ADMIN_PASSWORD, "tenant": "b"}
    )
    assert boss.status_code == 200, boss.text
    b = Api(client, api.ctx, boss.json()["token"])
    answer = b.delete(f"users/{ivan}/totp", status=404)
    assert answer["detail"].endswith("does not exist")
    assert api.get(f"users/{ivan}")["totp_enrolled"] is True
    admin_id = api.get("users?username=admin")["items"][0]["id"]
    # Nor the global administrator's (who lives in tenant A); their own users', yes.
    b.delete(f"users/{admin_id}/totp", status=404)
    set_mode(b, "optional", b.get("identity-sources")["items"][0]["id"])
    worker_token = login(client, "worker-b", 200, tenant="b")["token"]
    enrol(client, worker_token)
    worker = b.get("users?username=worker-b")["items"][0]
    assert worker["totp_enrolled"] is True
    b.delete(f"users/{worker['id']}/totp")
    assert b.get(f"users/{worker['id']}")["totp_enrolled"] is False
    # In its own tenant, a tenant admin cannot reset an account stronger than theirs.
    add_local_user(api.ctx, "boss-a", ADMIN_PASSWORD, role="tenant_admin")
    boss_a = client.post(LOGIN, json={"username": "boss-a", "password": ADMIN_PASSWORD})
    a = Api(client, api.ctx, boss_a.json()["token"])
    assert "global administrator" in a.delete(f"users/{admin_id}/totp", status=403)["detail"]
    a.delete(f"users/{ivan}/totp")
    # A plain user cannot reset anyone's, not even their own without a code.
    plain = client.delete(f"/api/v1/admin/users/{ivan}/totp", headers=bearer(worker_token))
    assert plain.status_code == 403


def test_the_secret_is_nowhere_in_clear(optional: Api, caplog: pytest.LogCaptureFixture) -> None:
    api, client = optional, optional.client
    caplog.set_level(logging.DEBUG)
    add_local_user(api.ctx, "judy", USER_PASSWORD)
    token = login(client, "judy", 200)["token"]
    started = client.post(ME_TOTP, headers=bearer(token))
    secret = started.json()["secret"]
    app = Authenticator(secret)
    answers = [
        client.post(f"{ME_TOTP}/confirm", json={"code": app.code()}, headers=bearer(token)).text
    ]
    needed = login(client, "judy", 202)
    answers.append(repr(needed))
    answers.append(repr(finish(client, needed["challenge"], app.code())))
    user = api.get("users?username=judy")["items"][0]
    for path in (
        "users",
        f"users/{user['id']}",
        "identity-sources",
        "events?limit=1000",
    ):
        answers.append(client.get(f"/api/v1/admin/{path}", headers=api.headers).text)
    answers.append(client.get("/api/v1/client/me", headers=bearer(token)).text)
    answers.append(client.get("/api/v1/openapi.json").text)
    forms = {secret, secret.lower(), secret.rstrip("=")}
    for text in answers:
        assert not any(f in text for f in forms)
    assert not any(f in caplog.text for f in forms)
    dumped = []
    with api.ctx.db.read() as session:
        for table in Base.metadata.sorted_tables:
            dumped += [repr(tuple(r)) for r in session.execute(select(table))]
        sealed = session.scalar(select(User.totp_sealed).where(User.id == user["id"]))
    assert dumped and not any(f in row for row in dumped for f in forms)
    # Stored, but sealed with the broker's key.
    assert sealed and api.ctx.secrets.open(sealed) == secret


def test_one_code_sent_twice_at_once_passes_once(optional: Api) -> None:
    """Two logins of one user racing with the same code: the step is spent atomically."""
    api, client = optional, optional.client
    app = enrolled_user(api, "kate")
    racers = 4
    challenges = [login(client, "kate", 202)["challenge"] for _ in range(racers)]
    code = app.code()
    start = threading.Barrier(racers)

    def race(challenge: str) -> int:
        start.wait()
        response = client.post(LOGIN_TOTP, json={"challenge": challenge, "code": code})
        return response.status_code

    with ThreadPoolExecutor(max_workers=racers) as pool:
        statuses = sorted(pool.map(race, challenges))
    assert statuses == [200] + [401] * (racers - 1)
    assert [f["reason"] for f in failures(api)] == ["replayed_second_factor"] * (racers - 1)

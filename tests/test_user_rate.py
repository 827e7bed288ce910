"""An account signs in at most DESKBROKER_USER_SIGN_INS_PER_MINUTE times a minute and a
user connects at most DESKBROKER_USER_CONNECTS_PER_MINUTE times: past either, a 429 with
Retry-After and nothing written. Wrong passwords use up nobody's sign-ins."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from deskbroker.config import Settings
from deskbroker.services.context import BrokerContext
from deskbroker.services.rate_window import SlidingWindows
from deskbroker.services.user_rate import UserActivityLimiter
from deskbroker.store.tables import Event
from tests.helpers import USER_PASSWORD, Api, bearer
from tests.test_agent_event_rate import Clock
from tests.test_totp import LOGIN, enrolled_user, finish, login, set_mode

LIMIT = 3


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"user_sign_ins_per_minute": LIMIT, "user_connects_per_minute": LIMIT}
    )


@pytest.fixture
def clock(ctx: BrokerContext) -> Clock:
    clock = Clock()
    limiter = UserActivityLimiter()
    limiter.sign_ins = SlidingWindows(clock=clock)
    limiter.connects = SlidingWindows(clock=clock)
    ctx.user_activity = limiter
    return clock


def _events(ctx: BrokerContext, kind: str) -> int:
    with ctx.db.read() as session:
        return int(
            session.scalar(select(func.count()).select_from(Event).where(Event.kind == kind)) or 0
        )


def _sign_in(api: Api, name: str, password: str = USER_PASSWORD) -> Any:
    return api.client.post("/api/v1/auth/login", json={"username": name, "password": password})


def test_an_account_past_its_sign_ins_gets_429_and_nothing_is_written(
    api: Api, ctx: BrokerContext, clock: Clock
) -> None:
    api.seed_pool(2, users=2)
    # Wrong passwords count against nobody's sign-ins (they have their own lockout).
    for _ in range(2):
        assert _sign_in(api, "user0", "wrong-password").status_code == 401
    for _ in range(LIMIT):
        assert _sign_in(api, "user0").status_code == 200
    logins = _events(ctx, "login")
    refused = _sign_in(api, "user0")
    assert refused.status_code == 429, refused.text
    body = refused.json()
    assert f"signed in more than {LIMIT} times in the last minute" in body["detail"]
    assert "DESKBROKER_USER_SIGN_INS_PER_MINUTE" in body["detail"]
    assert refused.headers["Retry-After"] == "60"
    assert _events(ctx, "login") == logins  # nothing recorded
    # A wrong password is still a wrong password: the limit tells nothing without it.
    assert _sign_in(api, "user0", "wrong-password").status_code == 401
    # Another account of the tenant is not touched.
    assert _sign_in(api, "user1").status_code == 200
    # Once the minute has passed, the account signs in again.
    clock.now += 60.5
    assert _sign_in(api, "user0").status_code == 200


def test_every_spelling_of_an_account_counts_as_one(
    api: Api, ctx: BrokerContext, clock: Clock
) -> None:
    api.seed_pool(1)
    source = api.post(
        "identity-sources", {"name": "corp", "kind": "local", "domain": "corp.example"}
    )
    api.post(
        "users",
        {"identity_source_id": source["id"], "username": "ann", "password": USER_PASSWORD},
    )
    spellings = ["ann@corp.example", "CORP.EXAMPLE\\ann", "ann@CORP.EXAMPLE"]
    answers = [_sign_in(api, spellings[n % 3]).status_code for n in range(LIMIT + 1)]
    assert answers == [200] * LIMIT + [429]


def test_a_password_alone_uses_up_no_sign_ins_of_an_account_with_a_second_factor(
    api: Api, ctx: BrokerContext, clock: Clock
) -> None:
    """Someone with the password but not the authenticator (what a second factor is
    for) gets challenges, and the account's owner still signs in."""
    api.seed_pool(1)
    set_mode(api, "optional")
    app = enrolled_user(api, "alice")  # that sign-in had no second factor yet: one
    for _ in range(LIMIT + 2):
        login(api.client, "alice", 202)  # a challenge, never answered
    challenge = login(api.client, "alice", 202)["challenge"]
    assert finish(api.client, challenge, app.code())["token"]
    # Complete sign-ins count: the enrolment's and this one; one more is let through.
    clock.now += 31  # the next code, not the one just used
    challenge = login(api.client, "alice", 202)["challenge"]
    assert finish(api.client, challenge, app.code())["token"]
    refused = api.client.post(LOGIN, json={"username": "alice", "password": USER_PASSWORD})
    assert refused.status_code == 429, refused.text


def _connect(api: Api, signed: dict[str, Any]) -> Any:
    """The signed-in user's connect to the desktop their sign-in gave them."""
    desktop = signed["offers"][0]["desktop"]["id"]
    return api.client.post(
        f"/api/v1/client/desktops/{desktop}/connect",
        json={"protocol": "rdp"},
        headers=bearer(signed["token"]),
    )


def test_a_user_past_their_connects_gets_429_and_nothing_is_written(
    api: Api, ctx: BrokerContext, clock: Clock
) -> None:
    api.seed_pool(1, users=1)
    signed = api.login("user0")
    for _ in range(LIMIT):
        answer = _connect(api, signed)
        assert answer.status_code == 200, answer.text
    connects = _events(ctx, "connect")
    refused = _connect(api, signed)
    assert refused.status_code == 429, refused.text
    assert f"connect more than {LIMIT} times in the last minute" in refused.json()["detail"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert _events(ctx, "connect") == connects
    clock.now += 60.5
    again = _connect(api, signed)
    assert again.status_code == 200, again.text


def test_a_revoked_token_uses_up_none_of_its_owners_connects(
    api: Api, ctx: BrokerContext, clock: Clock
) -> None:
    api.seed_pool(1, users=1)
    stolen = api.login("user0")
    out = api.client.post("/api/v1/auth/logout", headers=bearer(stolen["token"]))
    assert out.status_code in (200, 204), out.text
    for _ in range(LIMIT + 1):
        answer = _connect(api, stolen)
        assert answer.status_code == 401, answer.text
    answer = _connect(api, api.login("user0"))
    assert answer.status_code == 200, answer.text


def test_the_windows_forget_quiet_keys_and_give_back_what_was_not_theirs() -> None:
    clock = Clock()
    windows = SlidingWindows(clock=clock)
    first, wait = windows.admit("a", 2)
    assert first is not None and wait == 0
    assert windows.admit("a", 2)[0] is not None
    assert windows.admit("a", 2) == (None, 60)
    assert windows.wait("a", 2) == 60
    windows.give_back("a", first)
    assert windows.wait("a", 2) == 0
    windows.count("b")
    assert windows.keys() == 2
    clock.now += 61
    windows.admit("c", 2)  # a look after a whole window sweeps the quiet ones
    assert windows.keys() == 1

"""TOTP second factor through the HTTP API, with real codes computed from the secret."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from deskbroker.bootstrap import add_local_user
from deskbroker.services.second_factor import ChallengeSigner
from deskbroker.store.tables import Base, Event, User
from tests.helpers import ADMIN_PASSWORD, USER_PASSWORD, Api

LOGIN = "/api/v1/auth/login"
LOGIN_TOTP = "/api/v1/auth/login/totp"
ENROL_AT_LOGIN = "/api/v1/auth/login/totp/enrol"
ME_TOTP = "/api/v1/me/totp"


@dataclass
class Authenticator:
    """The user's phone: codes of strictly later time steps, as a real app shows them
    over time (an app never shows one step's code twice, and the broker refuses that)."""

    secret: str
    last: int = -1
    totp: pyotp.TOTP = field(init=False)

    def __post_init__(self) -> None:
        self.totp = pyotp.TOTP(self.secret)

    def code(self) -> str:
        now = self.totp.timecode(time.time())
        step = max(self.last + 1, now - 1)
        while step > self.totp.timecode(time.time()) + 1:
            # Past the broker's window: wait, as the user would, for the next code.
            time.sleep(0.25)
        self.last = step
        return self.totp.generate_otp(step)

    def wrong(self) -> str:
        right = {self.totp.at(time.time(), counter_offset=k) for k in (-1, 0, 1)}
        return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in right)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def set_mode(api: Api, mode: str, source_id: str | None = None) -> None:
    body = api.patch(f"identity-sources/{source_id or api.source_id()}", {"second_factor": mode})
    assert body["second_factor"] == mode


def login(client: TestClient, username: str, status: int, **extra: Any) -> dict[str, Any]:
    response = client.post(
        LOGIN, json={"username": username, "password": USER_PASSWORD, **extra}
    )
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def finish(
    client: TestClient, challenge: str, code: str, status: int = 200
) -> dict[str, Any]:
    response = client.post(LOGIN_TOTP, json={"challenge": challenge, "code": code})
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def enrol(client: TestClient, token: str) -> Authenticator:
    """A logged-in user adds an app and confirms it with its first code."""
    started = client.post(ME_TOTP, headers=bearer(token))
    assert started.status_code == 201, started.text
    app = Authenticator(started.json()["secret"])
    confirmed = client.post(
        f"{ME_TOTP}/confirm", json={"code": app.code()}, headers=bearer(token)
    )
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

"""User tokens are revocable: every request that carries one reads the user row (disabled,
role, token generation); logout, a disabled account, a role change and a new password
end the tokens a user holds. Through the real HTTP API."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from deskbroker.bootstrap import add_local_user
from deskbroker.services.access import ACCOUNT_DISABLED, ACCOUNT_GONE, REVOKED
from deskbroker.store.tables import Event, User
from tests.helpers import USER_PASSWORD, Api, counting


def _admin(api: Api, username: str) -> tuple[Api, str]:
    made = api.post(
        "users",
        {
            "identity_source_id": api.source_id(),
            "username": username,
            "password": USER_PASSWORD,
            "role": "tenant_admin",
        },
    )
    return Api(api.client, api.ctx, api.login(username)["token"]), str(made["id"])


def _new_user(name: str, api: Api) -> dict[str, Any]:
    return {"identity_source_id": api.source_id(), "username": name, "password": USER_PASSWORD}


def _usernames(api: Api) -> set[str]:
    return {u["username"] for u in api.get("users?limit=1000")["items"]}


def test_a_disabled_admins_old_token_is_refused_and_creates_no_account(api: Api) -> None:
    dora, dora_id = _admin(api, "dora")
    assert dora.post("users", _new_user("made-before", api))["username"] == "made-before"
    api.patch(f"users/{dora_id}", {"disabled": True})

    refused = dora.post("users", _new_user("made-after", api), status=401)
    assert refused["detail"] == ACCOUNT_DISABLED
    assert "made-after" not in _usernames(api)
    me = api.client.get("/api/v1/client/me", headers=dora.headers)
    assert me.status_code == 401 and me.json()["detail"] == ACCOUNT_DISABLED
    # Enabled again, the old token stays dead: disabling ended it.
    api.patch(f"users/{dora_id}", {"disabled": False})
    assert dora.post("users", _new_user("made-later", api), status=401)["detail"] == REVOKED
    assert "made-later" not in _usernames(api)


def test_a_demoted_admins_old_token_is_refused(api: Api) -> None:
    dan, dan_id = _admin(api, "dan")
    api.patch(f"users/{dan_id}", {"role": "user"})
    refused = dan.post("users", _new_user("eve", api), status=401)
    assert refused["detail"] == REVOKED and refused["reason"] == "token_revoked"
    assert "eve" not in _usernames(api)
    # A fresh login carries the role Dan has now.
    fresh = Api(api.client, api.ctx, api.login("dan")["token"])
    assert fresh.post("users", _new_user("eve", api), status=403)["detail"].startswith(
        "This needs an administrator"
    )


def test_a_new_password_a_cli_reset_and_a_deleted_account_end_old_tokens(api: Api) -> None:
    add_local_user(api.ctx, "paul", USER_PASSWORD)
    paul = api.get("users?username=paul")["items"][0]
    token = api.login("paul")["token"]
    me = {"Authorization": f"Bearer {token}"}
    assert api.client.get("/api/v1/client/me", headers=me).status_code == 200
    api.patch(f"users/{paul['id']}", {"password": "another-password-1"})
    assert api.client.get("/api/v1/client/me", headers=me).json()["detail"] == REVOKED

    token = api.login("paul", "another-password-1")["token"]
    me = {"Authorization": f"Bearer {token}"}
    add_local_user(api.ctx, "paul", USER_PASSWORD)  # `deskbroker user add` resets him
    assert api.client.get("/api/v1/client/me", headers=me).status_code == 401

    token = api.login("paul")["token"]
    api.delete(f"users/{paul['id']}")
    gone = api.client.get("/api/v1/client/me", headers={"Authorization": f"Bearer {token}"})
    assert gone.status_code == 401 and gone.json()["detail"] == ACCOUNT_GONE
    # The desktop listing checks the user row inside its own read: the same answer.
    listing = api.client.get(
        "/api/v1/client/desktops", headers={"Authorization": f"Bearer {token}"}
    )
    assert listing.status_code == 401 and listing.json()["detail"] == ACCOUNT_GONE


def test_logout_ends_every_token_of_the_caller_and_no_one_elses(api: Api) -> None:
    add_local_user(api.ctx, "lou", USER_PASSWORD)
    add_local_user(api.ctx, "kim", USER_PASSWORD)
    laptop, phone = api.login("lou")["token"], api.login("lou")["token"]
    kim = api.login("kim")["token"]
    response = api.client.post("/api/v1/auth/logout", headers={"Authorization": f"Bearer {laptop}"})
    assert response.status_code == 204, response.text
    for token in (laptop, phone):
        mine = api.client.get(
            "/api/v1/client/desktops", headers={"Authorization": f"Bearer {token}"}
        )
        assert mine.status_code == 401 and mine.json()["detail"] == REVOKED
    again = api.client.post("/api/v1/auth/logout", headers={"Authorization": f"Bearer {phone}"})
    assert again.status_code == 401
    assert api.client.get(
        "/api/v1/client/me", headers={"Authorization": f"Bearer {kim}"}
    ).is_success
    assert api.client.post("/api/v1/auth/logout").status_code == 401
    # Logging in again works, and the logout is in the audit trail.
    assert api.login("lou")["username"] == "lou"
    with api.ctx.db.read() as session:
        lou = session.scalars(select(User.id).where(User.username == "lou")).one()
        kinds = session.scalars(select(Event.kind).where(Event.user_id == lou)).all()
    assert "logout" in kinds


def test_a_disabled_users_token_connects_to_nothing_within_the_budget(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The configuration view's age check (a statement every two seconds) is not the
    # connect's: on a loaded machine the two connects lay further apart.
    monkeypatch.setattr(api.ctx.cache, "max_age_s", 3600.0)
    api.seed_pool(1, users=1)
    result = api.login("user0")
    desktop = result["offers"][0]["desktop"]
    headers = {"Authorization": f"Bearer {result['token']}"}
    path = f"/api/v1/client/desktops/{desktop['id']}/connect"
    assert api.client.post(path, json={}, headers=headers).status_code == 200
    with counting() as statements:
        again = api.client.post(path, json={}, headers=headers)
    assert again.status_code == 200, again.text
    # The user row rides on the desktop's read: find, mark used, event.
    assert len(statements) <= 3, "\n".join(statements)

    user = api.get("users?username=user0")["items"][0]
    api.patch(f"users/{user['id']}", {"disabled": True})
    refused = api.client.post(path, json={}, headers=headers)
    assert refused.status_code == 401 and refused.json()["detail"] == ACCOUNT_DISABLED
    descriptor = api.client.get(
        f"/api/v1/client/desktops/{desktop['id']}/descriptor", headers=headers
    )
    assert descriptor.status_code == 401

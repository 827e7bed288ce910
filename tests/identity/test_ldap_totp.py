"""A directory user and the TOTP second factor, against the real slapd."""

from __future__ import annotations

from typing import Any

from tests.authenticator import Authenticator
from tests.helpers import Api
from tests.identity.directories import Slapd
from tests.identity.sources import add_ldap_source, group_policy


def post(api: Api, path: str, body: dict[str, Any], status: int) -> dict[str, Any]:
    response = api.client.post(path, json=body)
    assert response.status_code == status, response.text
    result: dict[str, Any] = response.json()
    return result


def test_a_directory_user_enrols_on_first_login_and_keeps_their_ou_rule(
    api: Api, slapd: Slapd
) -> None:
    source = add_ldap_source(api, slapd)
    api.patch(f"identity-sources/{source['id']}", {"second_factor": "required"})
    ids = group_policy(api, source["id"], "devs")
    # Only the OU decides this rule; the broker's user row does not keep the OU, so
    # the challenge must carry it from the password step to the code step.
    api.patch(
        f"assignment-rules/{api.get('assignment-rules')['items'][0]['id']}",
        {"conditions": {"ou": "ou=people,dc=example,dc=org"}},
    )
    login = {"username": "ann", "password": "ann-password-1"}
    needed = post(api, "/api/v1/auth/login", login, 202)
    assert needed["enrol"] is True
    # The directory user exists in the broker from the password step on.
    user = api.get(f"users?username=ann&identity_source_id={source['id']}")["items"][0]
    assert user["id"] == needed["user_id"] and user["totp_enrolled"] is False
    enrolment = post(api, "/api/v1/auth/login/totp/enrol", {"challenge": needed["challenge"]}, 200)
    app = Authenticator(enrolment["secret"])
    done = post(
        api, "/api/v1/auth/login/totp", {"challenge": needed["challenge"], "code": app.code()}, 200
    )
    assert [o["pool_id"] for o in done["offers"]] == [ids["pool"]]
    # The next login asks for a code; a wrong password is still refused before any code.
    again = post(api, "/api/v1/auth/login", login, 202)
    assert again["enrol"] is False
    wrong = post(api, "/api/v1/auth/login", {**login, "password": "nope-nope"}, 401)
    assert wrong["detail"] == "Wrong username or password."
    code = {"challenge": again["challenge"], "code": app.code()}
    assert post(api, "/api/v1/auth/login/totp", code, 200)["user_id"] == user["id"]

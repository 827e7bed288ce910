"""Samba AD through the real HTTP API: nested groups, refusals, domains, StartTLS."""

from __future__ import annotations

from typing import Any

from deskbroker.identity.ldap import ACCOUNT_EXPIRED, DISABLED, LOCKED, NEEDS_TLS, PASSWORD_EXPIRED
from deskbroker.identity.ldap_pool import UNREACHABLE
from deskbroker.services.login import WRONG_CREDENTIALS
from tests.helpers import Api
from tests.identity.directories import AD_DOMAIN, SambaDc, Slapd, free_port
from tests.identity.sources import (
    ad_params,
    add_ad_source,
    add_ldap_source,
    add_source,
    group_policy,
)


def login(api: Api, username: str, password: str) -> Any:
    return api.client.post("/api/v1/auth/login", json={"username": username, "password": password})


def test_an_ad_user_in_a_nested_group_gets_its_policy(api: Api, samba_dc: SambaDc) -> None:
    source = add_ad_source(api, samba_dc)
    ids = group_policy(api, source["id"], "VDI-Users")

    upn = login(api, f"alice@{AD_DOMAIN}", "Alice-Passw0rd!")
    assert upn.status_code == 200, upn.text
    assert upn.json()["offers"][0]["pool_id"] == ids["pool"]
    down_level = login(api, "CORP\\alice", "Alice-Passw0rd!")  # NetBIOS name of the domain
    assert down_level.status_code == 200, down_level.text
    assert down_level.json()["user_id"] == upn.json()["user_id"]

    user = api.get(f"users?identity_source_id={source['id']}")["items"][0]
    assert user["username"] == "alice"
    assert set(user["groups"]) >= {"Engineers", "VDI-Users"}  # VDI-Users only by nesting
    assert user["display_name"] == "Alice Smith" and user["email"] == f"alice@{AD_DOMAIN}"
    assert user["attributes"] == {"department": "Engineering"}

    # Without nesting (memberOf holds direct groups only) the rule does not match.
    flat = add_source(
        api,
        "corp-flat",
        "activedirectory",
        ad_params(samba_dc, group_mode="member_of"),
        domain="flat.test",
        password="Svc-Passw0rd!",
    )
    group_policy(api, flat["id"], "VDI-Users", tag="flat-")
    assert login(api, "alice@flat.test", "Alice-Passw0rd!").json()["offers"] == []


def test_ad_refusals_are_four_clear_messages(api: Api, samba_dc: SambaDc) -> None:
    add_ad_source(api, samba_dc)
    add_source(
        api,
        "down",
        "activedirectory",
        ad_params(samba_dc, servers=[f"ldaps://127.0.0.1:{free_port()}"]),
        domain="down.test",
        password="Svc-Passw0rd!",
    )
    cases = {
        "alice": ("wrong-Passw0rd!", 401, WRONG_CREDENTIALS, "wrong_credentials"),
        "bob": ("Bob-Passw0rd!", 403, DISABLED, "disabled"),
        "erin": ("Erin-Passw0rd!", 403, LOCKED, "locked"),
        "carl": ("Carl-Passw0rd!", 403, PASSWORD_EXPIRED, "password_expired"),
        "dave": ("Dave-Passw0rd!", 403, ACCOUNT_EXPIRED, "account_expired"),
    }
    users_before = api.get("users")["total"]
    reasons: dict[str, str] = {}
    for name, (password, status, message, reason) in cases.items():
        response = login(api, f"{name}@{AD_DOMAIN}", password)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"] == message
        reasons[f"{name}@{AD_DOMAIN}"] = reason
    unreachable = login(api, "alice@down.test", "Alice-Passw0rd!")
    assert unreachable.status_code == 503, unreachable.text
    assert unreachable.json()["detail"] == UNREACHABLE
    assert "the directory is unreachable" in UNREACHABLE.lower()
    reasons["alice@down.test"] = "unreachable"

    assert len({WRONG_CREDENTIALS, DISABLED, LOCKED, PASSWORD_EXPIRED, UNREACHABLE}) == 5
    # Nothing written but the audit events.
    assert api.get("users")["total"] == users_before
    assert api.get("assignments")["total"] == 0
    failed = api.get("events?kind=login_failed")["items"]
    kept = [(e["actor"], e["detail"]["reason"]) for e in failed]
    # A refusal by the directory names an account: kept as typed. A wrong password of a
    # user the broker has no row for, like an unreachable directory, says nothing of the
    # name, which is then kept as a tag only (it may have been a password); the tag is
    # the account's, whatever domain was typed.
    tagged = sorted((a, r) for a, r in kept if a.startswith("unknown name #"))
    assert [r for _, r in tagged] == ["unreachable", "wrong_credentials"]
    assert tagged[0][0] == tagged[1][0]
    named = {a: r for a, r in reasons.items() if r not in ("unreachable", "wrong_credentials")}
    assert dict(k for k in kept if not k[0].startswith("unknown")) == named


def test_the_same_name_in_two_untrusted_domains_is_two_users(
    api: Api, samba_dc: SambaDc, slapd: Slapd
) -> None:
    corp = add_ad_source(api, samba_dc)
    example = add_ldap_source(api, slapd)
    in_corp = login(api, f"ann@{AD_DOMAIN}", "Ann-Passw0rd!")
    in_example = login(api, "ann@example.org", "ann-password-1")
    assert in_corp.status_code == 200 and in_example.status_code == 200
    assert in_corp.json()["user_id"] != in_example.json()["user_id"]
    # Each domain's password works only in its own domain.
    assert login(api, f"ann@{AD_DOMAIN}", "ann-password-1").status_code == 401
    anns = {u["identity_source_id"]: u for u in api.get("users?username=ann")["items"]}
    assert anns[corp["id"]]["display_name"] == "Ann of Corp"
    # Each group by name and by DN.
    assert anns[corp["id"]]["groups"] == [
        "VDI-Users",
        "cn=vdi-users,cn=users,dc=corp,dc=example,dc=test",
    ]
    assert anns[example["id"]]["groups"] == ["cn=devs,ou=groups,dc=example,dc=org", "devs"]


def test_start_tls_and_a_plain_bind_that_ad_refuses(api: Api, samba_dc: SambaDc) -> None:
    add_ad_source(api, samba_dc, servers=[samba_dc.url("ldap", 389)], start_tls=True)
    assert login(api, "CORP\\alice", "Alice-Passw0rd!").status_code == 200
    add_source(
        api,
        "plain",
        "activedirectory",
        ad_params(samba_dc, servers=[samba_dc.url("ldap", 389)]),
        domain="plain.test",
        password="Svc-Passw0rd!",
    )
    response = login(api, "alice@plain.test", "Alice-Passw0rd!")
    assert response.status_code == 503 and response.json()["detail"] == NEEDS_TLS

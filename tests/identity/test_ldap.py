"""OpenLDAP through the real HTTP API: groups to policy, refusals, failover, statements."""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from deskbroker.domain.rules import AssignmentRule
from deskbroker.identity.base import Credentials, source_kinds
from deskbroker.identity.ldap import LOCKED, PASSWORD_EXPIRED
from deskbroker.identity.ldap_pool import UNREACHABLE
from deskbroker.security import PasswordHashing
from deskbroker.services.context import BrokerContext
from deskbroker.services.login import WRONG_CREDENTIALS, LoginService
from tests.helpers import Api, counting, post_login
from tests.identity.directories import (
    LDAP_SERVICE_PASSWORD,
    Slapd,
    free_port,
    running_slapd,
)
from tests.identity.sources import add_ldap_source, group_policy, ldap_params


def test_a_member_of_an_ldap_group_gets_its_policy(api: Api, slapd: Slapd) -> None:
    source = add_ldap_source(api, slapd)
    assert source["has_secrets"] and "secrets" not in source
    ids = group_policy(api, source["id"], "devs")

    response = post_login(api, "ann", "ann-password-1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert [o["status"] for o in body["offers"]] == ["assigned"]
    assert body["offers"][0]["pool_id"] == ids["pool"]

    # The directory user became a broker user of this source, with what the directory says.
    user = api.get(f"users?username=ann&identity_source_id={source['id']}")["items"][0]
    assert user["id"] == body["user_id"]
    assert user["display_name"] == "Ann Archer" and user["email"] == "ann@example.org"
    assert user["groups"] == ["cn=devs,ou=groups,dc=example,dc=org", "devs"]
    assert user["attributes"] == {"departmentNumber": "R&D"}
    assert not user["has_password"]

    # ben is in no group: he logs in but is offered nothing.
    ben = post_login(api, "ben@example.org", "ben-password-1")
    assert ben.status_code == 200 and ben.json()["offers"] == []
    # The source selector of the login form reaches the same user as the domain suffix.
    again = post_login(api, "ann", "ann-password-1", source="example")
    assert again.json()["user_id"] == body["user_id"]
    assert again.json()["offers"][0]["desktop"]["id"] == body["offers"][0]["desktop"]["id"]


def test_ldap_refusals_are_clear_and_write_only_the_audit_event(
    api: Api, slapd: Slapd, tmp_path: Path
) -> None:
    add_ldap_source(api, slapd)
    with running_slapd(tmp_path / "doomed") as doomed:
        gone = api.post(
            "identity-sources",
            {
                "name": "gone",
                "kind": "ldap",
                "domain": "gone.example",
                "params": ldap_params(doomed),
                "secrets": {"bind_password": LDAP_SERVICE_PASSWORD},
            },
        )
        assert post_login(api, "ann@gone.example", "ann-password-1").status_code == 200
    # The pooled connection to the stopped server is stale now; nothing else answers.
    cases = {
        ("ann@example.org", "not-her-password"): (401, WRONG_CREDENTIALS),
        ("nobody@example.org", "whatever-1"): (401, WRONG_CREDENTIALS),
        ("locky@example.org", "locky-password-1"): (403, LOCKED),
        ("resetty@example.org", "resetty-password-1"): (403, PASSWORD_EXPIRED),
        ("ann@gone.example", "ann-password-1"): (503, UNREACHABLE),
    }
    users_before = api.get("users")["total"]
    for (username, password), (status, message) in cases.items():
        response = post_login(api, username, password)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"] == message
    assert "unreachable" in UNREACHABLE
    assert api.get("users")["total"] == users_before
    assert api.get("assignments")["total"] == 0
    failed = api.get("events?kind=login_failed")["items"]
    reasons = {e["actor"]: e["detail"]["reason"] for e in failed}
    # A name the broker has no user for at that domain is kept only as a tag (it may have
    # been a password); a directory's refusal, or a broker user, names an account.
    tags = [a for a in reasons if a.startswith("unknown name #")]
    assert len(tags) == 2 and {reasons[t] for t in tags} == {"wrong_credentials"}
    assert {a: r for a, r in reasons.items() if a not in tags} == {
        "locky@example.org": "locked",
        "resetty@example.org": "password_expired",
        "ann@gone.example": "unreachable",
    }
    assert gone["id"]


def test_failover_from_a_dead_server_to_a_live_one(api: Api, slapd: Slapd) -> None:
    dead = f"ldap://127.0.0.1:{free_port()}"
    source = add_ldap_source(api, slapd, servers=[dead, slapd.url])
    group_policy(api, source["id"], "devs")
    for _ in range(2):  # the second login skips the dead server it remembers
        response = post_login(api, "ann", "ann-password-1")
        assert response.status_code == 200, response.text
        assert response.json()["offers"][0]["status"] == "assigned"


def test_an_ldap_login_stays_within_the_statement_budget(
    api: Api, ctx: BrokerContext, slapd: Slapd
) -> None:
    source = add_ldap_source(api, slapd)
    group_policy(api, source["id"], "devs")
    service = LoginService(ctx)
    service.login("ben", "ben-password-1")  # warms the config cache and the pools
    with counting() as first:
        result = service.login("ann@example.org", "ann-password-1")
    assert result.offers[0].status == "assigned"
    with counting() as returning:
        service.login("ann@example.org", "ann-password-1")
    with counting() as plain:
        service.login("ann", "ann-password-1")
    # First login: lockout check, find user, create the user, claim, event (a user the
    # sign-in just created holds no desktop: no read of held desktops).
    assert len(first) == 5, "\n".join(first)
    assert not any("assigned_user_id = " in s and s.startswith("SELECT") for s in first)
    # Unchanged directory data: no upsert, as for a local user.
    assert len(returning) == 4, "\n".join(returning)
    # A plain name: one read finds its owner among all the sources, as for a domain.
    assert len(plain) == 4, "\n".join(plain)


def test_lookup_and_params_validation(api: Api, slapd: Slapd) -> None:
    driver = source_kinds()["ldap"](
        ldap_params(slapd), {"bind_password": LDAP_SERVICE_PASSWORD}, PasswordHashing(1, 64, 1)
    )
    try:
        who = driver.lookup("ANN", None)
        assert (
            who is not None
            and who.username == "ann"
            and who.groups
            == {
                "devs",
                "cn=devs,ou=groups,dc=example,dc=org",
            }
        )
        assert who.ou == "ou=people,dc=example,dc=org"
        # A rule names the group by name or, to be exact about the OU, by DN.
        moment = datetime.now(UTC)
        for group in ("Devs", "CN=devs,OU=groups,DC=example,DC=org"):
            assert AssignmentRule("r", None, group=group).matches(who, None, moment)
        other_ou = AssignmentRule("r", None, group="cn=devs,ou=contractors,dc=example,dc=org")
        assert not other_ou.matches(who, None, moment)
        assert driver.lookup("nobody", None) is None
    finally:
        driver.close()

    for params, words in (
        ({"servers": ["http://x"], "base_dn": "dc=x"}, "not an ldap:// or ldaps:// URL"),
        ({"servers": ["ldap://x"], "base_dn": "not a dn"}, "is not a DN"),
        ({"servers": ["ldap://x"], "base_dn": "dc=x", "user_filter": "uid=*"}, "LDAP filter"),
        ({"servers": ["ldap://x"], "base_dn": "dc=x", "bind_password": "x"}, "bind_password"),
    ):
        response = api.client.post(
            "/api/v1/admin/identity-sources",
            json={"name": "bad", "kind": "ldap", "params": params},
            headers=api.headers,
        )
        assert response.status_code == 422, response.text
        assert words in response.json()["detail"]


def test_an_unknown_name_costs_a_bind_like_a_wrong_password(api: Api, slapd: Slapd) -> None:
    """No timing oracle: a name the directory lacks still costs a user bind's round trip."""
    source = add_ldap_source(api, slapd)
    driver = source_kinds()["ldap"](
        source["params"], {"bind_password": LDAP_SERVICE_PASSWORD}, PasswordHashing(1, 64, 1)
    )
    known: list[float] = []
    unknown: list[float] = []
    try:
        for n in range(25):  # interleaved, so load on the machine hits both alike
            for name, sink in (("ann", known), (f"ghost{n}", unknown)):
                started = time.perf_counter()
                assert driver.authenticate(Credentials(name, "not-the-password"), None) is None
                sink.append(time.perf_counter() - started)
    finally:
        driver.close()
    ratio = statistics.median(unknown) / statistics.median(known)
    assert ratio > 0.8, f"unknown names answer {ratio:.2f}x as fast as wrong passwords"

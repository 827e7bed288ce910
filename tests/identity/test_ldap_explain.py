"""Explain against a real slapd: the source's own description of the user decides, and a
directory that cannot be reached is a clear 503."""

from __future__ import annotations

from typing import Any

from tests.helpers import Api
from tests.identity.directories import LDAP_BASE, LDAP_SERVICE_PASSWORD, Slapd, free_port
from tests.identity.sources import add_ldap_source, add_source, group_policy, ldap_params


def explain(api: Api, **body: Any) -> Any:
    return api.client.post("/api/v1/admin/explain", json=body, headers=api.headers)


def test_an_ldap_user_is_explained_as_the_directory_describes_them(api: Api, slapd: Slapd) -> None:
    source = add_ldap_source(api, slapd)
    devs = group_policy(api, source["id"], "devs")
    people = group_policy(api, source["id"], "people", tag="ou-")
    # Re-aim the second rule at the OU instead of a group, after the group rule (at 0).
    rule = api.get(f"assignment-rules?policy_id={people['policy']}")["items"][0]
    api.patch(
        f"assignment-rules/{rule['id']}",
        {"position": 5, "conditions": {"ou": f"ou=People, {LDAP_BASE.upper()}"}},
    )

    response = explain(api, username="ann@example.org", client_address="10.1.2.3", at="08:00")
    assert response.status_code == 200, response.text
    ann = response.json()
    assert ann["source"]["name"] == "example"
    assert ann["source"]["why"] == "domain 'example.org' of 'ann@example.org' is its domain"
    assert ann["identity"]["groups"] == ["cn=devs,ou=groups,dc=example,dc=org", "devs"]
    assert ann["identity"]["ou"] == f"ou=people,{LDAP_BASE}"
    assert ann["identity"]["attributes"] == {"departmentNumber": "R&D"}
    # ann never logged in: no broker user yet, and explaining her creates none.
    assert ann["user"] is None
    assert "a first login would create the broker user" in ann["source"]["detail"]
    assert api.get(f"users?identity_source_id={source['id']}")["total"] == 0
    decided = ann["deciding_rule"]
    assert decided["reason"] == "group 'devs' among the user's groups"
    assert ann["policy"]["id"] == devs["policy"]
    ou_rule = next(r for r in ann["rules"] if r["id"] == rule["id"])
    assert ou_rule["matched"] and not ou_rule["deciding"]

    # ben is in no group: the OU rule decides for him, with the reason the group rule failed.
    ben = explain(api, username="ben", source="example").json()
    assert ben["deciding_rule"]["id"] == rule["id"]
    assert ben["deciding_rule"]["reason"] == (
        f"the user's OU 'ou=people,{LDAP_BASE}' is within 'ou=People, {LDAP_BASE.upper()}'"
    )
    assert ben["rules"][0]["reason"] == "group 'devs' not among the user's groups"
    assert ben["source"]["why"] == "selected by name ('example')"

    # And a real login of ann gets what explain said.
    login = api.client.post(
        "/api/v1/auth/login", json={"username": "ann@example.org", "password": "ann-password-1"}
    )
    assert login.status_code == 200, login.text
    assert [o["pool_id"] for o in login.json()["offers"]] == [devs["pool"]]


def test_an_unreachable_directory_is_a_503_in_words(api: Api, slapd: Slapd) -> None:
    dead = f"ldap://127.0.0.1:{free_port()}"  # nothing listens there
    add_source(
        api,
        "gone",
        "ldap",
        ldap_params(slapd, servers=[dead], connect_timeout_s=1),
        domain="gone.example",
        password=LDAP_SERVICE_PASSWORD,
        position=5,  # tried before the working source
    )
    response = explain(api, username="ann@gone.example")
    assert response.status_code == 503, response.text
    problem = response.json()
    assert problem["title"] == "Directory unreachable"
    assert problem["detail"].startswith(
        "identity source gone cannot be reached, so 'ann@gone.example' cannot be described: "
    )
    # When another source knows the user, the login would move on to it, and so does explain.
    add_ldap_source(api, slapd)
    response = explain(api, username="ann")
    assert response.status_code == 200, response.text
    tried = response.json()["sources_tried"]
    assert [(s["name"], s["outcome"]) for s in tried][-2:] == [
        ("gone", "unreachable"),
        ("example", "knows"),
    ]

"""A configuration plan is no oracle for stored secrets: a caller who may not write a
center's or an identity source's secrets gets the same answer for the right guess as
for a wrong one; a caller who may write them still plans and applies idempotently."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from deskbroker.bootstrap import add_local_user
from tests.helpers import USER_PASSWORD, Api

PLAN = "/api/v1/admin/config/plan"
RIGHT = "hunter2-the-stored-one"
WRONG = "letmein-a-guess"


def planned(api: Api, token: str, document: dict[str, Any]) -> dict[str, Any]:
    response = api.client.post(PLAN, json=document, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def guessing(document: dict[str, Any], section: str, name: str, secrets: dict[str, str]) -> Any:
    """The document with ``secrets`` given for the named object."""
    guess = copy.deepcopy(document)
    entry = next(e for e in guess[section] if e["name"] == name)
    entry["secrets"] = secrets
    return guess


@pytest.fixture
def sealed(api: Api) -> dict[str, Any]:
    """A center and an identity source with secrets set by the global admin; the
    exported sections that hold them."""
    api.post("centers", {"name": "vault", "kind": "static", "secrets": {"password": RIGHT}})
    api.post("identity-sources", {"name": "corp", "kind": "local", "secrets": {"bind": RIGHT}})
    exported = api.get("config")
    return {"centers": exported["centers"], "identity_sources": exported["identity_sources"]}


def readers(api: Api) -> dict[str, str]:
    """Tokens that may read the configuration but not write centers or identity sources:
    an auditor's, and an administrator's API token scoped to reading."""
    add_local_user(api.ctx, "aud", USER_PASSWORD, role="auditor")
    scoped = api.post(
        "api-tokens",
        {
            "name": "read-only",
            "scopes": [
                "config:read",
                "centers:read",
                "identity-sources:read",
                "assignment-rules:read",
            ],
            "expires_in_days": 1,
        },
    )
    return {"auditor": api.login("aud")["token"], "scoped token": scoped["token"]}


@pytest.mark.parametrize(
    ("section", "name", "key"),
    [("centers", "vault", "password"), ("identity_sources", "corp", "bind")],
)
def test_a_reader_learns_nothing_from_guessing_a_stored_secret(
    api: Api, sealed: dict[str, Any], section: str, name: str, key: str
) -> None:
    for who, token in readers(api).items():
        right = planned(api, token, guessing(sealed, section, name, {key: RIGHT}))
        wrong = planned(api, token, guessing(sealed, section, name, {key: WRONG}))
        assert right == wrong, who
        assert right["refused"]["status"] == 403, (who, right)


def test_a_writer_plans_and_applies_the_same_secrets_as_no_change(
    api: Api, sealed: dict[str, Any]
) -> None:
    same = guessing(sealed, "centers", "vault", {"password": RIGHT})
    assert planned(api, api.token, same)["changes"] == []
    other = planned(api, api.token, guessing(sealed, "centers", "vault", {"password": WRONG}))
    assert other["changes"] == [
        {"action": "update", "section": "centers", "name": "vault", "fields": ["secrets"]}
    ]
    applied = api.client.post(
        "/api/v1/admin/config/apply",
        json=same,
        headers={"Authorization": f"Bearer {api.token}"},
    )
    assert applied.status_code == 200, applied.text
    assert applied.json()["changes"] == []

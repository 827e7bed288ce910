"""A user row's groups and attributes are bounded: refused from an administrator, cut
from a directory (``domain.user_bounds``)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from deskbroker.domain.rules import Identity
from deskbroker.domain.user_bounds import (
    MAX_ATTRIBUTE_KEY_CHARS,
    MAX_ATTRIBUTE_VALUE_CHARS,
    MAX_ATTRIBUTES,
    MAX_ATTRIBUTES_BYTES,
    MAX_GROUP_CHARS,
    MAX_GROUPS,
    attributes_size,
    clip_identity,
)
from deskbroker.services.directory_bounds import within_bounds
from deskbroker.services.login import LoginService
from tests.helpers import Api

# Marks every group name and value of a directory's answer: none may reach a log line.
PRIVATE = "PRIVATE"


def _filled(size: int) -> dict[str, str]:
    """Attributes of exactly ``size`` bytes as compact JSON, every value within bounds."""
    attributes: dict[str, str] = {}
    n = 0
    while True:
        key = f"k{n:02d}"
        attributes[key] = ""
        room = size - attributes_size(attributes)
        if room <= MAX_ATTRIBUTE_VALUE_CHARS:
            attributes[key] = "v" * room  # ASCII: one character is one byte
            break
        attributes[key] = "v" * MAX_ATTRIBUTE_VALUE_CHARS
        n += 1
    assert attributes_size(attributes) == size
    return attributes


TOO_MUCH: list[tuple[str, dict[str, Any], str]] = [
    (
        "groups-count",
        {"groups": [f"g{n}" for n in range(MAX_GROUPS + 1)]},
        f"groups: at most {MAX_GROUPS} groups, not {MAX_GROUPS + 1}",
    ),
    (
        "group-length",
        {"groups": ["staff", "g" * (MAX_GROUP_CHARS + 1)]},
        f"groups: group 2 is {MAX_GROUP_CHARS + 1} characters long; a group name has at "
        f"most {MAX_GROUP_CHARS} characters",
    ),
    (
        "attributes-count",
        {"attributes": {f"a{n}": "x" for n in range(MAX_ATTRIBUTES + 1)}},
        f"attributes: at most {MAX_ATTRIBUTES} attributes, not {MAX_ATTRIBUTES + 1}",
    ),
    (
        "key-length",
        {"attributes": {"k" * (MAX_ATTRIBUTE_KEY_CHARS + 1): "x"}},
        f"is {MAX_ATTRIBUTE_KEY_CHARS + 1} characters long; an attribute's key has at most "
        f"{MAX_ATTRIBUTE_KEY_CHARS} characters",
    ),
    (
        "value-length",
        {"attributes": {"dept": "v" * (MAX_ATTRIBUTE_VALUE_CHARS + 1)}},
        f"attributes: the value of 'dept' is {MAX_ATTRIBUTE_VALUE_CHARS + 1} characters "
        f"long; an attribute's value has at most {MAX_ATTRIBUTE_VALUE_CHARS} characters",
    ),
    (
        "attributes-size",
        {"attributes": _filled(MAX_ATTRIBUTES_BYTES + 1)},
        f"attributes: the attributes are {MAX_ATTRIBUTES_BYTES + 1} bytes as JSON; at most "
        f"{MAX_ATTRIBUTES_BYTES} (16 KiB) in all",
    ),
    (
        # The review's body: 500 keys of 2,000 characters, just under the body limit.
        "review",
        {"attributes": {f"a{n:03d}": "x" * 2000 for n in range(500)}},
        f"attributes: at most {MAX_ATTRIBUTES} attributes, not 500",
    ),
]
AT_THE_BOUND: list[tuple[str, dict[str, Any]]] = [
    ("groups", {"groups": [f"{n:03d}".ljust(MAX_GROUP_CHARS, "g") for n in range(MAX_GROUPS)]}),
    ("attributes-count", {"attributes": {f"a{n}": "x" for n in range(MAX_ATTRIBUTES)}}),
    (
        "key-and-value",
        {"attributes": {"k" * MAX_ATTRIBUTE_KEY_CHARS: "v" * MAX_ATTRIBUTE_VALUE_CHARS}},
    ),
    ("attributes-size", {"attributes": _filled(MAX_ATTRIBUTES_BYTES)}),
]


def _user(api: Api, username: str = "carol", **fields: Any) -> dict[str, Any]:
    body = {"identity_source_id": api.source_id(), "username": username, **fields}
    return api.post("users", body)


def _users(api: Api) -> list[dict[str, Any]]:
    return list(api.get("users?limit=1000")["items"])


def _refused(response: Any, words: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert words in response.json()["detail"], response.json()["detail"]


@pytest.mark.parametrize(("case", "body", "words"), TOO_MUCH, ids=[c[0] for c in TOO_MUCH])
def test_a_user_beyond_a_bound_is_refused_in_words_and_nothing_written(
    api: Api, case: str, body: dict[str, Any], words: str
) -> None:
    before = _users(api)
    created = api.client.post(
        "/api/v1/admin/users",
        json={"identity_source_id": api.source_id(), "username": "dave", **body},
        headers=api.headers,
    )
    _refused(created, words)
    assert _users(api) == before
    user = _user(api, groups=["staff"], attributes={"dept": "lab"})
    changed = api.client.patch(f"/api/v1/admin/users/{user['id']}", json=body, headers=api.headers)
    _refused(changed, words)
    assert api.get(f"users/{user['id']}") == user


@pytest.mark.parametrize(("case", "body"), AT_THE_BOUND, ids=[c[0] for c in AT_THE_BOUND])
def test_a_user_at_the_bound_is_accepted(api: Api, case: str, body: dict[str, Any]) -> None:
    created = _user(api, **body)
    for name, value in body.items():
        stored = api.get(f"users/{created['id']}")[name]
        assert (sorted(stored) if name == "groups" else stored) == value
    other = _user(api, "erin")
    changed = api.patch(f"users/{other['id']}", body)
    for name, value in body.items():
        assert (sorted(changed[name]) if name == "groups" else changed[name]) == value


def _overflowing() -> Identity:
    """A directory's answer beyond every bound, every name and value marked private."""
    groups = {f"{PRIVATE}-{n:03d}" for n in range(MAX_GROUPS + 44)}
    groups.add(PRIVATE + "x" * MAX_GROUP_CHARS)  # too long: dropped, not shortened
    attributes = {f"a{n:02d}": f"{PRIVATE}-{n}" for n in range(MAX_ATTRIBUTES + 10)}
    attributes["a00"] = PRIVATE + "v" * 5000  # too long: cut to the bound
    attributes["k" * (MAX_ATTRIBUTE_KEY_CHARS + 1)] = PRIVATE  # too long a key: dropped
    return Identity(username="dora", groups=frozenset(groups), attributes=attributes)


def test_a_directory_answer_beyond_the_bounds_is_clipped() -> None:
    who = _overflowing()
    clipped = clip_identity(who)
    kept = clipped.identity
    assert kept.groups == frozenset(sorted(g for g in who.groups if len(g) <= 256)[:MAX_GROUPS])
    assert all(len(g) <= MAX_GROUP_CHARS for g in kept.groups)
    assert list(kept.attributes) == [f"a{n:02d}" for n in range(MAX_ATTRIBUTES)]
    assert kept.attributes["a00"] == (PRIVATE + "v" * 5000)[:MAX_ATTRIBUTE_VALUE_CHARS]
    assert kept.attributes["a01"] == f"{PRIVATE}-1"
    assert attributes_size(kept.attributes) <= MAX_ATTRIBUTES_BYTES
    assert (kept.username, kept.display_name) == (who.username, who.display_name)
    words = "; ".join(clipped.cuts)
    assert PRIVATE not in words
    assert f"{MAX_GROUPS + 44} groups, the first {MAX_GROUPS} kept" in words
    assert "1 group name(s) longer than 256 characters dropped" in words
    assert f"10 attribute(s) beyond the first {MAX_ATTRIBUTES} dropped" in words
    assert "1 attribute value(s) cut to 1000 characters" in words
    assert "1 attribute(s) with a key longer than 100 characters dropped" in words


def test_a_directory_answer_over_16_kib_keeps_what_fits() -> None:
    who = Identity(username="dora", attributes={f"a{n:02d}": "v" * 1000 for n in range(30)})
    clipped = clip_identity(who)
    assert attributes_size(clipped.identity.attributes) <= MAX_ATTRIBUTES_BYTES
    assert len(clipped.identity.attributes) == 16
    assert clipped.cuts == ("14 attribute(s) dropped to keep 16 KiB in all",)


def test_an_answer_within_the_bounds_is_kept_as_it_is(caplog: pytest.LogCaptureFixture) -> None:
    who = Identity(username="dora", groups=frozenset({"staff"}), attributes={"dept": "lab"})
    assert clip_identity(who).identity is who and clip_identity(who).cuts == ()
    with caplog.at_level(logging.WARNING, logger="deskbroker.identity"):
        assert within_bounds(who, "corp") is who
    assert not caplog.records


def test_a_cut_answer_is_logged_once_without_its_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="deskbroker.identity"):
        kept = within_bounds(_overflowing(), "corp")
    assert len(kept.groups) == MAX_GROUPS
    [record] = [r for r in caplog.records if r.name == "deskbroker.identity"]
    assert record.levelno == logging.WARNING
    said = record.getMessage()
    assert "identity source corp" in said and "user dora" in said
    assert PRIVATE not in said


def test_a_sign_in_stores_the_clipped_answer_once(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    # An OpenID Connect source (never contacted here): the login path takes the
    # provider's vouched identity, as its callback hands it over.
    source = api.post(
        "identity-sources",
        {
            "name": "sso",
            "kind": "oidc",
            "params": {"issuer": "https://idp.example", "client_id": "broker"},
            "position": 20,
        },
    )
    login = LoginService(api.ctx)
    with caplog.at_level(logging.WARNING, logger="deskbroker.identity"):
        login.login_identity(source["id"], _overflowing())
    warned = [r for r in caplog.records if r.name == "deskbroker.identity"]
    assert len(warned) == 1 and PRIVATE not in warned[0].getMessage()
    [row] = api.get("users?username=dora")["items"]
    expected = clip_identity(_overflowing()).identity
    assert sorted(row["groups"]) == sorted(expected.groups)
    assert row["attributes"] == expected.attributes
    # The same answer again is the row as it stands: nothing to write.
    login.login_identity(source["id"], _overflowing())
    assert api.get(f"users/{row['id']}")["updated_at"] == row["updated_at"]

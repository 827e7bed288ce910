"""POST /admin/explain and ``deskbroker explain``: the answer agrees with a real login,
stays in the admin's tenant, refuses bad input in words and writes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from deskbroker.api.app import create_app
from deskbroker.bootstrap import add_local_user
from deskbroker.cli import app as cli_app
from deskbroker.services.context import BrokerContext
from tests.helpers import ADMIN_PASSWORD, USER_PASSWORD, Api


def explain(api: Api, status: int = 200, **body: Any) -> dict[str, Any]:
    response = api.client.post("/api/v1/admin/explain", json=body, headers=api.headers)
    assert response.status_code == status, response.text
    result: dict[str, Any] = response.json()
    return result


def pool_with_policy(api: Api, name: str, machines: int) -> dict[str, str]:
    center = api.post(
        "centers",
        {
            "name": f"{name}-center",
            "kind": "static",
            "params": {
                "machines": [
                    {"name": f"{name}-{i}", "address": f"127.0.4.{i + 1}"} for i in range(machines)
                ]
            },
        },
    )
    pool = api.post("pools", {"name": name, "center_ids": [center["id"]]})
    policy = api.post("policies", {"name": f"{name}-policy", "entries": [{"pool_id": pool["id"]}]})
    return {"pool": pool["id"], "policy": policy["id"]}


def rule(api: Api, name: str, position: int, policy: str, **extra: Any) -> str:
    body = {"identity_source_id": api.source_id(), "name": name, "position": position}
    created = api.post("assignment-rules", {**body, "policy_id": policy, **extra})
    return str(created["id"])


@pytest.fixture
def office(api: Api) -> dict[str, str]:
    """Three pools and four rules: a group, a network during a window around now, an
    attribute, and a default; three users who land on different rules."""
    eng, desk, kiosk = (
        pool_with_policy(api, "eng", 2),
        pool_with_policy(api, "desk", 2),
        pool_with_policy(api, "kiosk", 1),
    )
    now = datetime.now(UTC)
    window = {
        "days": list(range(7)),
        "start": f"{now - timedelta(hours=1):%H:%M}",
        "end": f"{now + timedelta(hours=1):%H:%M}",
    }
    ids = {
        "eng": eng["pool"],
        "desk": desk["pool"],
        "kiosk": kiosk["pool"],
        "r-eng": rule(
            api,
            "engineers",
            10,
            eng["policy"],
            conditions={"group": "Engineering"},
            role="helpdesk",
        ),
        "r-desk": rule(
            api,
            "office network",
            20,
            desk["policy"],
            conditions={"client_cidr": "10.1.0.0/16", "window": window},
        ),
        "r-contract": rule(
            api,
            "contractors",
            30,
            kiosk["policy"],
            conditions={
                "attributes": [{"attribute": "employeeType", "op": "equals", "value": "contractor"}]
            },
        ),
        "r-default": rule(api, "everyone else", 100, kiosk["policy"]),
    }
    source = api.source_id()
    for name, extra in (
        ("ann", {"groups": ["Engineering"]}),
        ("bob", {"attributes": {"employeeType": "contractor"}}),
        ("cy", {}),
    ):
        api.post(
            "users",
            {"identity_source_id": source, "username": name, "password": USER_PASSWORD, **extra},
        )
    return ids


@pytest.fixture
def from_office(ctx: BrokerContext) -> Iterator[TestClient]:
    """A client whose requests come from 10.1.2.3, as a real login from the office would."""
    with TestClient(create_app(ctx), client=("10.1.2.3", 50000)) as client:
        yield client


def test_explain_names_the_deciding_rule_and_the_reasons(api: Api, office: dict[str, str]) -> None:
    ann = explain(api, username="ann", client_address="10.9.0.1")
    assert ann["deciding_rule"]["id"] == office["r-eng"]
    assert ann["deciding_rule"]["reason"] == "group 'Engineering' among the user's groups"
    assert ann["policy"]["name"] == "eng-policy" and ann["role"] == "helpdesk"
    assert ann["source"]["name"] == "local" and ann["source"]["outcome"] == "knows"
    assert ann["identity"]["groups"] == ["Engineering"]
    assert [o["pool_name"] for o in ann["offers"]] == ["eng"]
    assert ann["offers"][0]["free"] == 2
    assert ann["offers"][0]["outcome"] == "would get 1 free desktop"
    # The rules after the deciding one are still explained, each with its own reason.
    assert [r["matched"] for r in ann["rules"]] == [True, False, False, True]
    assert ann["rules"][1]["reason"] == "10.9.0.1 not in 10.1.0.0/16"
    assert ann["rules"][2]["reason"] == (
        "attribute 'employeeType' is not set, so it does not equal 'contractor'"
    )
    assert ann["rules"][3]["reason"] == "the default rule: it has no conditions"
    assert "rule 'engineers' decides: policy eng-policy" in ann["summary"]

    bob = explain(api, username="bob", client_address="10.9.0.1")
    assert bob["deciding_rule"]["id"] == office["r-contract"]
    assert bob["rules"][0]["reason"] == "group 'Engineering' not among the user's groups"

    # Twelve hours from now is outside the two-hour window around now, whatever the hour.
    night = (datetime.now(UTC) + timedelta(hours=12)).replace(second=0, microsecond=0)
    cy_at_night = explain(api, username="cy", client_address="10.1.2.3", at=night.isoformat())
    window = cy_at_night["rules"][1]
    assert not window["matched"]
    assert window["checks"][0] == {
        "condition": "client",
        "ok": True,
        "words": "10.1.2.3 in 10.1.0.0/16",
    }
    assert window["reason"].startswith(f"{night:%H:%M %a} outside every day ")
    assert cy_at_night["deciding_rule"]["id"] == office["r-default"]


def test_explain_agrees_with_what_a_real_login_gets(
    api: Api, office: dict[str, str], from_office: TestClient
) -> None:
    expected = {"ann": "r-eng", "bob": "r-desk", "cy": "r-desk"}
    for name, rule_key in expected.items():
        answer = explain(api, username=name, client_address="10.1.2.3")
        assert answer["deciding_rule"]["id"] == office[rule_key]
        response = from_office.post(
            "/api/v1/auth/login", json={"username": name, "password": USER_PASSWORD}
        )
        assert response.status_code == 200, response.text
        login = response.json()
        assert login["role"] == answer["role"]
        assert [o["pool_id"] for o in login["offers"]] == [o["pool_id"] for o in answer["offers"]]
        assert [o["status"] for o in login["offers"]] == ["assigned"]
        logged = api.get(f"events?kind=login&user_id={login['user_id']}")["items"][0]
        assert logged["detail"]["rule"] == answer["deciding_rule"]["id"]
    # desk has two desktops and both are taken now: explain says a third user would wait,
    # and a returning user keeps what they hold.
    add_local_user(api.ctx, "dora", USER_PASSWORD)
    dora = explain(api, username="dora", client_address="10.1.2.3")
    assert dora["offers"][0]["free"] == 0
    assert dora["offers"][0]["outcome"] == "would wait in the queue at position 1"
    response = from_office.post(
        "/api/v1/auth/login", json={"username": "dora", "password": USER_PASSWORD}
    )
    assert response.json()["offers"][0]["status"] == "queued"
    assert response.json()["offers"][0]["position"] == 1
    bob = explain(api, username="bob", client_address="10.1.2.3")
    held = api.get(f"assignments?user_id={bob['user']['id']}")["items"][0]["desktop_name"]
    assert bob["offers"][0]["holds"] == [held]
    assert bob["offers"][0]["outcome"] == f"keeps {held}"


def test_explain_writes_nothing(api: Api, office: dict[str, str]) -> None:
    before = api.get("events?limit=1000")["total"]
    free = api.get(f"pools/{office['eng']}/status")["counts"]["available"]
    explain(api, username="ann", client_address="10.1.2.3", at="08:00")
    assert api.get("events?limit=1000")["total"] == before
    assert api.get(f"pools/{office['eng']}/status")["counts"]["available"] == free
    assert api.get("assignments")["total"] == 0


def test_a_disabled_user_is_explained_as_refused(api: Api, office: dict[str, str]) -> None:
    cy = api.get("users?username=cy")["items"][0]
    api.patch(f"users/{cy['id']}", {"disabled": True})
    answer = explain(api, username="cy")
    assert answer["refused"] == "the account is disabled in the broker: the login would be refused"
    assert answer["offers"] == []


def test_bad_input_is_a_4xx_in_words(api: Api, office: dict[str, str]) -> None:
    cases = [
        ({"client_address": "10.1.2"}, 422, "'10.1.2' is not an IP address such as 10.1.2.3"),
        ({"at": "25:00"}, 422, "'25:00' is not a moment; give HH:MM"),
        ({"at": "next tuesday"}, 422, "is not a moment"),
        ({"timezone": "Mars/Olympus"}, 422, "'Mars/Olympus' is not a time zone"),
        ({"source": "nope"}, 404, "no enabled identity source named 'nope'"),
        ({"tenant": "nowhere"}, 404, "tenant 'nowhere' does not exist"),
        ({"username": "ghost"}, 404, "no identity source of tenant default knows 'ghost'"),
        ({"username": "a\nb"}, 422, "control characters"),
    ]
    for extra, status, words in cases:
        body = {"username": "ann", **extra}
        response = api.client.post("/api/v1/admin/explain", json=body, headers=api.headers)
        assert response.status_code == status, (extra, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert words in response.json()["detail"], (extra, response.json())
    # A user who is not an administrator cannot ask (ann's rule makes her helpdesk: she can).
    token = api.login("cy")["token"]
    response = api.client.post(
        "/api/v1/admin/explain",
        json={"username": "bob"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 403


def test_an_explain_in_another_tenant_is_refused(api: Api, office: dict[str, str]) -> None:
    add_local_user(api.ctx, "boss-b", ADMIN_PASSWORD, role="tenant_admin", tenant_name="b")
    add_local_user(api.ctx, "bea", USER_PASSWORD, tenant_name="b", groups=["Engineering"])
    api.ctx.cache.invalidate()
    response = api.client.post(
        "/api/v1/auth/login", json={"username": "boss-b", "password": ADMIN_PASSWORD, "tenant": "b"}
    )
    b = Api(api.client, api.ctx, response.json()["token"])
    # ann lives in the default tenant: B's admin neither reaches nor learns of her.
    answer = b.client.post("/api/v1/admin/explain", json={"username": "ann"}, headers=b.headers)
    assert answer.status_code == 404
    assert answer.json()["detail"] == "no identity source of tenant b knows 'ann' (tried: local)"
    other = b.client.post(
        "/api/v1/admin/explain", json={"username": "ann", "tenant": "default"}, headers=b.headers
    )
    assert other.status_code == 403
    assert other.json()["detail"] == "you can only explain users of your own tenant"
    # B's own user is explained against B's rules only (B has none: no policy), by B's
    # admin and by the global admin naming the tenant.
    mine = explain(b, username="bea")
    assert mine["tenant_name"] == "b" and mine["rules"] == [] and mine["policy"] is None
    assert explain(api, username="bea", tenant="b")["user"]["id"] == mine["user"]["id"]


def test_the_cli_prints_the_explanation(
    api: Api, office: dict[str, str], ctx: BrokerContext, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        cli_app,
        [
            "explain",
            "bob",
            "--from",
            "10.9.0.1",
            "--at",
            "08:00",
            "--timezone",
            "Europe/Paris",
            "--db",
            ctx.settings.effective_database_url,
            "--data-dir",
            str(tmp_path / "cli"),
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "rule 'contractors' decides: policy kiosk-policy" in out
    assert "group 'Engineering' not among the user's groups" in out
    assert "10.9.0.1 not in 10.1.0.0/16" in out
    assert "kiosk" in out and "would get 1 free desktop" in out
    assert "08:00" in out
    bad = CliRunner().invoke(
        cli_app,
        ["explain", "bob", "--from", "10.9", "--db", ctx.settings.effective_database_url],
    )
    assert bad.exit_code == 2
    assert "'10.9' is not an IP address" in bad.output

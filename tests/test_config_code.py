"""Configuration as code: export, plan and apply of a tenant's configuration document,
through the admin API as an operator's script would call it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from deskbroker.bootstrap import add_local_user
from deskbroker.cli import app
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Base, Event
from tests.connect_support import live_broker
from tests.helpers import ADMIN_PASSWORD, USER_PASSWORD, Api

CONFIG = "/api/v1/admin/config"


def export(api: Api, token: str | None = None, tenant_id: str | None = None) -> dict[str, Any]:
    response = api.client.get(
        CONFIG,
        params={"tenant_id": tenant_id} if tenant_id else None,
        headers={"Authorization": f"Bearer {token or api.token}"},
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def send(
    api: Api,
    verb: str,
    document: dict[str, Any],
    *,
    token: str | None = None,
    tenant_id: str | None = None,
    status: int = 200,
) -> dict[str, Any]:
    response = api.client.post(
        f"{CONFIG}/{verb}",
        json=document,
        params={"tenant_id": tenant_id} if tenant_id else None,
        headers={"Authorization": f"Bearer {token or api.token}"},
    )
    assert response.status_code == status, response.text
    result: dict[str, Any] = response.json()
    return result


def build_configuration(api: Api) -> None:
    """One of everything the document holds, tied together, in the default tenant."""
    ids = api.seed_pool(3, users=1)
    role = api.post("roles", {"name": "pool-watch", "permissions": ["pools:read"]})
    assert role["name"] == "pool-watch"
    protocol = api.post(
        "protocol-plans", {"name": "vnc-first", "protocols": [{"protocol": "vnc", "port": 5901}]}
    )
    power = api.post(
        "power-plans",
        {
            "name": "nightly",
            "rules": [{"event": "logout", "after_minutes": 30, "action": "shutdown"}],
        },
    )
    release = api.post(
        "release-plans",
        {"name": "quick", "rules": [{"event": "logout", "after_minutes": 5, "action": "release"}]},
    )
    desktops = api.get("desktops?name=lab-001")["items"]
    backup = api.post(
        "pools",
        {
            "name": "backup",
            "center_ids": [ids["center"]],
            "desktop_ids": [desktops[0]["id"]],
            "parent_pool_id": ids["pool"],
            "filters": [{"attribute": "name", "op": "equals", "value": "lab-001"}],
        },
    )
    policy = api.post(
        "policies",
        {
            "name": "staff",
            "description": "everyone on staff",
            "max_desktops_per_user": 2,
            "entries": [
                {
                    "pool_id": ids["pool"],
                    "assignment": "pooled",
                    "backup_pool_id": backup["id"],
                    "protocol_plan_id": protocol["id"],
                    "power_plan_id": power["id"],
                    "release_plan_id": release["id"],
                }
            ],
        },
    )
    source = api.post(
        "identity-sources", {"name": "partners", "kind": "local", "domain": "partners.example"}
    )
    api.post(
        "assignment-rules",
        {
            "identity_source_id": source["id"],
            "name": "staff-network",
            "position": 5,
            "conditions": {"group": "staff", "client_cidr": "10.0.0.0/8"},
            "policy_id": policy["id"],
            "role": "pool-watch",
        },
    )
    api.post("assignment-rules", {"identity_source_id": source["id"], "position": 9})


def events_after(ctx: BrokerContext, since: int) -> list[str]:
    with ctx.db.read() as session:
        return list(session.scalars(select(Event.kind).where(Event.id > since)).all())


def newest_event(ctx: BrokerContext) -> int:
    with ctx.db.read() as session:
        return int(session.scalar(select(func.max(Event.id))) or 0)


def rows(ctx: BrokerContext) -> dict[str, list[str]]:
    """Every row but the event log: what a refused document must leave as it was."""
    out: dict[str, list[str]] = {}
    with ctx.db.read() as session:
        for table in Base.metadata.sorted_tables:
            if table.name not in ("events", "login_throttle"):
                out[table.name] = sorted(repr(tuple(r)) for r in session.execute(select(table)))
    return out


def test_round_trip_onto_an_empty_tenant_gives_the_same_document(api: Api) -> None:
    build_configuration(api)
    document = export(api)
    assert [p["name"] for p in document["pools"]] == ["backup", "lab"]
    backup = document["pools"][0]
    assert backup["parent"] == "lab" and backup["centers"] == ["lab-center"]
    assert backup["desktops"] == [{"center": "lab-center", "name": "lab-001"}]
    assert [p["name"] for p in document["policies"]] == ["lab-policy", "staff"]
    entry = document["policies"][1]["entries"][0]
    assert entry["pool"] == "lab" and entry["backup_pool"] == "backup"
    assert (entry["protocol_plan"], entry["power_plan"], entry["release_plan"]) == (
        "vnc-first",
        "nightly",
        "quick",
    )
    partners = next(s for s in document["identity_sources"] if s["name"] == "partners")
    assert [(r["name"], r["policy"], r["role"]) for r in partners["rules"]] == [
        ("staff-network", "staff", "pool-watch"),
        ("", None, "user"),
    ]
    assert "id" not in str(list(document["pools"][0]))

    empty = api.post("tenants", {"name": "fresh"})
    assert export(api, tenant_id=empty["id"]) == {k: [] for k in document}
    applied = send(api, "apply", document, tenant_id=empty["id"])
    assert applied["applied"] and applied["refused"] is None
    made = {(c["section"], c["name"]) for c in applied["changes"] if c["action"] == "create"}
    assert ("pools", "backup") in made and ("rules", "partners/staff-network") in made
    assert len(made) == len(applied["changes"])
    assert export(api, tenant_id=empty["id"]) == document

    # Idempotent: the same document again changes nothing and logs nothing.
    since = newest_event(api.ctx)
    again = send(api, "apply", document, tenant_id=empty["id"])
    assert again["changes"] == [] and again["unchanged"] > 10
    assert events_after(api.ctx, since) == []
    # The copy is its own: the default tenant's objects are untouched and not shared.
    assert export(api) == document
    fresh_pools = api.get("pools?name=lab&limit=10")["items"]
    assert len({p["tenant_id"] for p in fresh_pools}) == 2


def test_plan_says_what_would_change_and_changes_nothing(api: Api) -> None:
    build_configuration(api)
    document = export(api)
    changed = copy.deepcopy(document)
    changed["pools"][1]["description"] = "the lab, renamed in words"
    changed["power_plans"].append(
        {"name": "weekend", "rules": [{"event": "idle", "after_minutes": 60, "action": "suspend"}]}
    )
    changed["roles"] = []
    before = rows(api.ctx)
    planned = send(api, "plan", changed)
    assert planned["applied"] is False
    got = {(c["action"], c["section"], c["name"]): c["fields"] for c in planned["changes"]}
    assert got[("update", "pools", "lab")] == ["description"]
    assert ("create", "power_plans", "weekend") in got
    # The role is still granted by a rule: its delete is refused, and the plan says so.
    assert planned["refused"] == {
        "status": 409,
        "detail": "roles (pool-watch, deleted as the document leaves it out): role pool-watch "
        "is granted by assignment rule 'staff-network'; change it first",
    }
    assert rows(api.ctx) == before

    changed["roles"] = document["roles"]
    applied = send(api, "apply", changed)
    assert {(c["action"], c["name"]) for c in applied["changes"]} == {
        ("update", "lab"),
        ("create", "weekend"),
    }
    assert api.get("pools?name=lab")["items"][0]["description"] == "the lab, renamed in words"


def test_a_pool_in_use_is_not_deleted_and_the_plan_says_why(api: Api) -> None:
    build_configuration(api)
    held = api.login("user0")["offers"][0]["desktop"]
    assert held["id"]
    document = export(api)
    document["policies"] = []
    document["identity_sources"] = [
        {**s, "rules": [r for r in s["rules"] if r["policy"] is None]}
        for s in document["identity_sources"]
    ]
    document["pools"] = [p for p in document["pools"] if p["name"] == "backup"]
    document["pools"][0]["parent"] = None
    before = rows(api.ctx)
    planned = send(api, "plan", document)
    refused = planned["refused"]
    assert refused is not None and refused["status"] == 409
    assert "pools (lab, deleted as the document leaves it out)" in refused["detail"]
    assert "assigned desktops" in refused["detail"]
    assert rows(api.ctx) == before

    failed = api.client.post(f"{CONFIG}/apply", json=document, headers=api.headers)
    assert failed.status_code == 409, failed.text
    assert failed.json()["detail"] == refused["detail"]
    assert "--force" in refused["detail"]
    assert rows(api.ctx) == before  # all or nothing: the policy and rules are still there

    # With force the plan shows the assignment it would release, and the apply does it.
    forced = api.client.post(
        f"{CONFIG}/plan", params={"force": "true"}, json=document, headers=api.headers
    ).json()
    assert forced["refused"] is None, forced
    releases = [c for c in forced["changes"] if c["action"] == "release"]
    assert releases == [
        {"action": "release", "section": "desktops", "name": held["name"], "fields": ["user0"]}
    ]
    assert rows(api.ctx) == before
    done = api.client.post(
        f"{CONFIG}/apply", params={"force": "true"}, json=document, headers=api.headers
    )
    assert done.status_code == 200, done.text
    assert api.get(f"desktops/{held['id']}")["assigned_user_id"] is None
    assert not api.get("pools?name=lab")["items"]
    released = api.get(f"events?kind=release&desktop_id={held['id']}")["items"]
    assert released and released[0]["detail"]["reason"] == "config apply deleted the pool"


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        (lambda d: d["pools"][0].update(centers=["nowhere"]), 422, "pools[0].centers[0]"),
        (
            lambda d: d["policies"][0]["entries"][0].update(power_plan="ghost"),
            422,
            "policies[0].entries[0].power_plan: there is no power plan named 'ghost'",
        ),
        (lambda d: d["pools"][1]["provisioning"].update(max_total=-1), 422, "pools.1.provisioning"),
        (lambda d: d["centers"][0].update(secrets="stored"), 422, "centers[0].secrets"),
        (lambda d: d["centers"][0].update(kind="openstack"), 422, "kind cannot change"),
        (lambda d: d["roles"].append(dict(d["roles"][0])), 422, "appears twice"),
        (lambda d: d["pools"][0].update(parent="backup"), 422, "nested inside itself"),
        (lambda d: d.update(pools=[{"name": "x", "zzz": 1}]), 422, "pools.0.zzz"),
    ],
)
def test_a_bad_document_is_refused_naming_the_field(
    api: Api, change: Any, status: int, words: str
) -> None:
    build_configuration(api)
    document = export(api)
    change(document)
    before = rows(api.ctx)
    for verb in ("plan", "apply"):
        response = api.client.post(f"{CONFIG}/{verb}", json=document, headers=api.headers)
        if verb == "plan" and response.status_code == 200:
            refused = response.json()["refused"]
            assert refused is not None and refused["status"] == status, response.text
            assert words in refused["detail"], refused
            continue
        assert response.status_code == status, response.text
        assert words in response.json()["detail"], response.text
    assert rows(api.ctx) == before


def test_secrets_are_never_exported_and_stored_keeps_them(api: Api) -> None:
    api.post(
        "centers",
        {"name": "vault", "kind": "static", "params": {}, "secrets": {"password": "s3cret-1"}},
    )
    document = export(api)
    assert "s3cret-1" not in str(document)
    vault = next(c for c in document["centers"] if c["name"] == "vault")
    assert vault["secrets"] == "stored"
    assert send(api, "apply", document)["changes"] == []
    vault["secrets"] = {"password": "s3cret-2"}
    changes = send(api, "apply", document)["changes"]
    assert changes == [
        {"action": "update", "section": "centers", "name": "vault", "fields": ["secrets"]}
    ]
    vault["secrets"] = None
    send(api, "apply", document)
    assert export(api)["centers"][0]["secrets"] is None


def tenant_admin(client: TestClient, ctx: BrokerContext, tenant: str) -> str:
    add_local_user(ctx, f"{tenant}-admin", ADMIN_PASSWORD, role="tenant_admin", tenant_name=tenant)
    response = client.post(
        "/api/v1/auth/login",
        json={"username": f"{tenant}-admin", "password": ADMIN_PASSWORD, "tenant": tenant},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def test_a_tenant_admin_cannot_reach_another_tenants_objects(api: Api) -> None:
    build_configuration(api)  # the default tenant's: lab-center, lab, staff...
    default_doc = export(api)
    alpha = tenant_admin(api.client, api.ctx, "alpha")
    mine = export(api, token=alpha)
    assert mine["pools"] == [] and "lab-center" not in str(mine)

    # Naming another tenant's objects is naming nothing.
    document = {
        "pools": [{"name": "mine", "centers": ["lab-center"]}],
        "policies": [{"name": "p", "entries": [{"pool": "lab"}]}],
    }
    refused = api.client.post(
        f"{CONFIG}/apply", json=document, headers={"Authorization": f"Bearer {alpha}"}
    )
    assert refused.status_code == 422
    assert refused.json()["detail"] == (
        "pools[0].centers[0]: there is no center named 'lab-center' in this tenant"
    )
    # Another tenant by id, and a made-up one, are refused alike.
    other = {}
    for tenant_id in (api.get("tenants?name=default")["items"][0]["id"], "made-up"):
        for verb, method in (("", "GET"), ("/plan", "POST"), ("/apply", "POST")):
            response = api.client.request(
                method,
                f"{CONFIG}{verb}",
                params={"tenant_id": tenant_id},
                json={} if method == "POST" else None,
                headers={"Authorization": f"Bearer {alpha}"},
            )
            other.setdefault(verb, set()).add((response.status_code, response.text))
    assert all(len(answers) == 1 for answers in other.values()), other
    assert all(next(iter(a))[0] == 403 for a in other.values())

    # A document that manages every section still touches only alpha's own.
    applied = send(api, "apply", {**default_doc, "identity_sources": None}, token=alpha)
    assert applied["refused"] is None
    send(api, "apply", {k: [] for k in default_doc if k != "identity_sources"}, token=alpha)
    assert export(api) == default_doc
    assert export(api, token=alpha)["pools"] == []


def test_config_permissions(api: Api) -> None:
    """Export and plan need config:read, apply config:apply, and every change its own."""
    build_configuration(api)
    api.post("roles", {"name": "exporter", "permissions": ["config:read", "*:read"]})
    api.post("roles", {"name": "applier", "permissions": ["config:*", "*:read", "pools:update"]})
    document = export(api)
    tokens = {}
    for role in ("exporter", "applier"):
        add_local_user(api.ctx, role, USER_PASSWORD, role=role)
        tokens[role] = api.login(role)["token"]
    assert export(api, token=tokens["exporter"]) == document
    send(api, "plan", document, token=tokens["exporter"])
    send(api, "apply", document, token=tokens["exporter"], status=403)
    document["pools"][0]["description"] = "changed by the applier"
    assert send(api, "apply", document, token=tokens["applier"])["changes"][0]["name"] == "backup"
    # The same rules as the pool routes: the global admin gets desktops through lab.
    document["pools"][1]["description"] = "changed by the applier"
    stronger = api.client.post(
        f"{CONFIG}/apply", json=document, headers={"Authorization": f"Bearer {tokens['applier']}"}
    )
    assert stronger.status_code == 403
    assert stronger.json()["detail"].startswith("pools[1] (lab): only a global administrator")
    document["pools"][1]["description"] = ""
    document["protocol_plans"][0]["protocols"][0]["port"] = 5902
    denied = api.client.post(
        f"{CONFIG}/apply", json=document, headers={"Authorization": f"Bearer {tokens['applier']}"}
    )
    assert denied.status_code == 403
    assert "protocol-plans:update" in denied.json()["detail"]


def test_the_cli_exports_plans_and_applies_a_yaml_file(api: Api, tmp_path: Path) -> None:
    """`deskbroker config` against a live broker with an API token, as a script runs it;
    a secret comes from the operator's environment, never from the file."""
    build_configuration(api)
    token = api.post("api-tokens", {"name": "ci", "scopes": ["*:*"], "expires_in_days": 1})
    runner = CliRunner()
    with live_broker(api.ctx) as url:
        env = {"DESKBROKER_URL": url, "DESKBROKER_TOKEN": token["token"]}
        exported = runner.invoke(app, ["config", "export", "-o", str(tmp_path / "t.yaml")], env=env)
        assert exported.exit_code == 0, exported.output
        document = yaml.safe_load((tmp_path / "t.yaml").read_text())
        assert document == export(api)

        document["centers"].append(
            {"name": "vault", "kind": "static", "secrets": {"password": "${env:VAULT_PW}"}}
        )
        (tmp_path / "t.yaml").write_text(yaml.safe_dump(document))
        missing = runner.invoke(app, ["config", "plan", str(tmp_path / "t.yaml")], env=env)
        assert missing.exit_code == 1
        assert "centers[1].secrets.password: the environment variable VAULT_PW" in " ".join(
            missing.output.split()
        )
        env["VAULT_PW"] = "from-the-environment"
        planned = runner.invoke(app, ["config", "plan", str(tmp_path / "t.yaml")], env=env)
        assert planned.exit_code == 0, planned.output
        assert "create centers" in planned.output and "vault" in planned.output
        assert "1 to create, 0 to update, 0 to delete" in planned.output
        assert api.get("centers?name=vault")["total"] == 0

        applied = runner.invoke(app, ["config", "apply", str(tmp_path / "t.yaml")], env=env)
        assert applied.exit_code == 0, applied.output
        assert "1 created, 0 updated, 0 deleted" in applied.output
        assert api.get("centers?name=vault")["items"][0]["has_secrets"] is True
        again = runner.invoke(app, ["config", "apply", str(tmp_path / "t.yaml")], env=env)
        assert "nothing changed" in again.output, again.output

        document["pools"] = []
        (tmp_path / "t.yaml").write_text(yaml.safe_dump(document))
        refused = runner.invoke(app, ["config", "plan", str(tmp_path / "t.yaml")], env=env)
        assert refused.exit_code == 2, refused.output
        assert "refused (409)" in refused.output

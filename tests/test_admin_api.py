"""The admin API resource by resource: create, read, update, delete and their rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select

from deskbroker.bootstrap import add_local_user
from deskbroker.errors import InvalidInput
from deskbroker.store.repository import Repository
from deskbroker.store.tables import Center, IdentitySource, Image, SessionRow, Tenant
from tests.helpers import ADMIN_PASSWORD, USER_PASSWORD, Api, scan_now


def static_center(api: Api, name: str, machines: list[dict[str, Any]], **extra: Any) -> Any:
    return api.post(
        "centers", {"name": name, "kind": "static", "params": {"machines": machines}, **extra}
    )


def machines(prefix: str, n: int, **fields: Any) -> list[dict[str, Any]]:
    return [{"name": f"{prefix}-{i}", "address": f"10.0.0.{i + 1}", **fields} for i in range(n)]


def detail(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return str(response.json()["detail"])


def total(api: Api, path: str) -> int:
    return int(api.get(path)["total"])


# --- tenants -------------------------------------------------------------------------


def test_tenant_crud(api: Api) -> None:
    created = api.post("tenants", {"name": "acme", "display_name": "Acme Inc", "quota_desktops": 5})
    assert created["quota_desktops"] == 5 and created["quota_sessions"] is None
    assert api.get(f"tenants/{created['id']}")["display_name"] == "Acme Inc"
    assert [t["name"] for t in api.get("tenants?name=acme")["items"]] == ["acme"]
    changed = api.patch(f"tenants/{created['id']}", {"quota_desktops": None, "display_name": "A"})
    assert changed["quota_desktops"] is None and changed["display_name"] == "A"
    assert "already exists" in api.post("tenants", {"name": "acme"}, status=409)["detail"]
    assert "name" in api.post("tenants", {"name": "Not Valid"}, status=422)["detail"]
    api.delete(f"tenants/{created['id']}")
    api.get(f"tenants/{created['id']}", status=404)


def test_tenant_in_use_cannot_be_deleted(api: Api) -> None:
    tenant = api.post("tenants", {"name": "busy"})
    static_center(api, "c", machines("m", 1), tenant_id=tenant["id"])
    text = api.delete(f"tenants/{tenant['id']}", status=409)["detail"]
    assert text == "tenant busy still has centers; delete them first"
    # The default tenant holds the admin's own account.
    default = api.get("tenants?name=default")["items"][0]
    assert "still has" in api.delete(f"tenants/{default['id']}", status=409)["detail"]


# --- centers -------------------------------------------------------------------------


def _center_secrets_are_write_only_and_sealed(api: Api) -> None:
    secret = "hunter2-very-secret"
    center = static_center(api, "dc", machines("m", 2), secrets={"password": secret})
    assert center["has_secrets"] is True
    listing = api.client.get("/api/v1/admin/centers", headers=api.headers).text
    single = api.client.get(f"/api/v1/admin/centers/{center['id']}", headers=api.headers).text
    events = api.client.get("/api/v1/admin/events", headers=api.headers).text
    for text in (json.dumps(center), listing, single, events):
        assert secret not in text
        assert '"secrets"' not in text
    with api.ctx.db.read() as session:
        sealed = session.scalar(select(Center.secrets_sealed).where(Center.id == center["id"]))
    assert sealed and secret not in sealed
    assert json.loads(api.ctx.secrets.open(sealed)) == {"password": secret}
    # Writing the params alone keeps the secrets; null removes them.
    assert api.patch(f"centers/{center['id']}", {"scan_interval_s": 300})["has_secrets"] is True
    assert api.patch(f"centers/{center['id']}", {"secrets": None})["has_secrets"] is False
    with api.ctx.db.read() as session:
        assert (
            session.scalar(select(Center.secrets_sealed).where(Center.id == center["id"])) is None
        )


def _identity_source_secrets_are_write_only(api: Api) -> None:
    source = api.post(
        "identity-sources", {"name": "second", "kind": "local", "secrets": {"bind": "s3cr3t-x"}}
    )
    assert source["has_secrets"] is True
    assert (
        "s3cr3t-x" not in api.client.get("/api/v1/admin/identity-sources", headers=api.headers).text
    )
    with api.ctx.db.read() as session:
        sealed = session.scalar(
            select(IdentitySource.secrets_sealed).where(IdentitySource.id == source["id"])
        )
    assert sealed and "s3cr3t-x" not in sealed


def test_center_scan_and_inventory(api: Api) -> None:
    center = static_center(api, "lab", machines("m", 3))
    assert center["status"] == "ok"
    assert total(api, f"desktops?center_id={center['id']}") == 3
    changed = api.patch(f"centers/{center['id']}", {"params": {"machines": machines("m", 4)}})
    assert changed["status"] == "ok"
    assert total(api, f"desktops?center_id={center['id']}") == 4
    scanned = scan_now(api, center["id"])
    assert scanned["status"] == "ok" and scanned["last_scan_at"] > changed["last_scan_at"]
    assert scanned["status_message"].endswith(", 0 new, 0 changed, 0 gone")
    assert [c["name"] for c in api.get("centers?kind=static")["items"]] == ["lab"]


def _center_bad_input(api: Api) -> None:
    before = total(api, "centers")
    text = api.post("centers", {"name": "x", "kind": "nope"}, status=422)["detail"]
    assert text == "unknown center kind 'nope'; installed kinds: " + text.split(": ", 1)[1]
    assert "static" in text
    text = api.post(
        "centers",
        {"name": "x", "kind": "static", "params": {"machines": [{"name": "a"}]}},
        status=422,
    )["detail"]
    assert text.startswith("center params: machines.0.address")
    api.post("centers", {"name": "x", "kind": "static", "secrets": {"k": 1}}, status=422)
    assert total(api, "centers") == before
    assert total(api, "desktops") == 0


def _center_listing_a_machine_twice_is_an_error_not_a_crash(api: Api) -> None:
    twice = [{"name": "same", "address": "10.0.0.1"}, {"name": "same", "address": "10.0.0.2"}]
    body = {"name": "dup", "kind": "static", "params": {"machines": twice}}
    detail = api.post("centers", body, 422)["detail"]
    assert "two machines are named 'same'" in detail
    smuggled = {"machines": [{"name": "b", "address": "10.0.0.1\nalternate shell:s:x"}]}
    detail = api.post("centers", {"name": "c", "kind": "static", "params": smuggled}, 422)["detail"]
    assert "neither an IP address nor a host name" in detail
    assert total(api, "desktops") == 0 and api.get("centers?name=dup")["total"] == 0


def test_center_delete_rules(api: Api) -> None:
    ids = api.seed_pool(2, users=1)
    api.login("user0")
    text = api.delete(f"centers/{ids['center']}", status=409)["detail"]
    assert text.startswith("center lab-center has assigned desktops (e.g. lab-00")
    spare = static_center(api, "spare", machines("s", 2))
    pool = api.post("pools", {"name": "spare-pool", "center_ids": [spare["id"]]})
    text = api.delete(f"centers/{spare['id']}", status=409)["detail"]
    assert text == "center spare is used by pool spare-pool; remove it from them first"
    api.patch(f"pools/{pool['id']}", {"center_ids": []})
    api.delete(f"centers/{spare['id']}")
    assert total(api, "desktops") == 2
    api.get(f"centers/{spare['id']}", status=404)


# --- images --------------------------------------------------------------------------


def test_images_are_listed_and_filtered(api: Api) -> None:
    center = static_center(api, "c", [])
    other = api.post("tenants", {"name": "other"})
    other_center = static_center(api, "c2", [], tenant_id=other["id"])
    with api.ctx.db.write() as session:
        for n, (cid, tid) in enumerate(
            [(center["id"], center["tenant_id"])] * 3 + [(other_center["id"], other["id"])]
        ):
            session.execute(
                insert(Image).values(
                    id=f"img{n}",
                    tenant_id=tid,
                    center_id=cid,
                    external_id=f"ext{n}",
                    name=f"ubuntu-{n}",
                    os="linux" if n else "windows",
                    attributes={},
                )
            )
    assert total(api, "images") == 4
    assert total(api, f"images?center_id={center['id']}") == 3
    assert [i["name"] for i in api.get("images?os=windows")["items"]] == ["ubuntu-0"]
    assert api.get("images/img1")["center_id"] == center["id"]
    text = api.get("images?flavor=big", status=422)["detail"]
    assert text == (
        "unknown query parameter 'flavor'; GET /api/v1/admin/images accepts "
        "center_id, limit, name, offset, os"
    )
    # Images are read-only: they come from the center.
    response = api.client.post("/api/v1/admin/images", json={}, headers=api.headers)
    assert response.status_code == 405


# --- desktops ------------------------------------------------------------------------


def test_desktop_patch_and_delete_rules(api: Api) -> None:
    ids = api.seed_pool(3, users=1)
    held = api.login("user0")["offers"][0]["desktop"]
    desktops = api.get(f"desktops?center_id={ids['center']}")["items"]
    free = next(d for d in desktops if d["assigned_user_id"] is None)
    user0 = api.get("users?username=user0")["items"][0]["id"]
    mine = api.get(f"desktops?assigned_user_id={user0}")["items"]
    assert [d["id"] for d in mine] == [held["id"]]
    assert api.get(f"desktops?name={free['name']}")["items"][0]["id"] == free["id"]
    assert api.get("desktops?power_state=running")["total"] == 3
    status = api.get(f"pools/{ids['pool']}/status")["counts"]
    assert status["available"] == 2
    changed = api.patch(f"desktops/{free['id']}", {"availability": "unavailable"})
    assert changed["availability"] == "unavailable"
    assert api.get(f"pools/{ids['pool']}/status")["counts"]["available"] == 1
    assert api.patch(f"desktops/{free['id']}", {"attributes": {"ports": {"vnc": 5901}}})[
        "attributes"
    ] == {"ports": {"vnc": 5901}}
    for bad, words in (
        ({"attributes": {"ports": {"vnc": "x"}}}, "port from 1 to 65535"),
        ({"attributes": {"ports": {"gopher": 70}}}, "unknown protocol"),
        ({"attributes": {"ports": "5900"}}, "must map a protocol"),
        ({"availability": "sometimes"}, "availability"),
        ({}, "nothing to change"),
        ({"name": "renamed"}, "unknown field 'name'"),
    ):
        assert words in api.patch(f"desktops/{free['id']}", bad, status=422)["detail"]
    assert api.get(f"desktops/{free['id']}")["attributes"] == {"ports": {"vnc": 5901}}
    text = api.delete(f"desktops/{held['id']}", status=409)["detail"]
    assert text == f"desktop {held['name']} is assigned; release it first"
    api.delete(f"desktops/{free['id']}")
    api.get(f"desktops/{free['id']}", status=404)
    assert total(api, "desktops") == 2


# --- pools ---------------------------------------------------------------------------


def members(api: Api, pool_id: str) -> list[str]:
    return [m["name"] for m in api.get(f"pools/{pool_id}/members")["items"]]


def test_pool_membership_by_center_filters_list_and_nesting(api: Api) -> None:
    win = machines("win", 2, os="windows", attributes={"floor": "2"})
    lin = [{"name": f"lin-{i}", "address": f"10.0.1.{i}", "os": "linux"} for i in range(3)]
    center = static_center(api, "mixed", win + lin)
    other = static_center(api, "other", machines("far", 1))
    by_center = api.post("pools", {"name": "all", "center_ids": [center["id"]]})
    assert len(members(api, by_center["id"])) == 5
    windows = api.post(
        "pools",
        {"name": "windows", "filters": [{"attribute": "os", "op": "equals", "value": "windows"}]},
    )
    assert members(api, windows["id"]) == ["win-0", "win-1"]
    floor = api.post(
        "pools",
        {"name": "floor2", "filters": [{"attribute": "floor", "op": "equals", "value": "2"}]},
    )
    assert members(api, floor["id"]) == ["win-0", "win-1"]
    far_id = api.get(f"desktops?center_id={other['id']}")["items"][0]["id"]
    lin0 = api.get("desktops?name=lin-0")["items"][0]["id"]
    explicit = api.post("pools", {"name": "picked", "desktop_ids": [far_id, lin0]})
    assert members(api, explicit["id"]) == ["far-0", "lin-0"]
    # A sub-pool only ever holds its parent's desktops.
    child = api.post(
        "pools",
        {
            "name": "lin-only",
            "parent_pool_id": by_center["id"],
            "filters": [{"attribute": "name", "op": "begins_with", "value": "lin"}],
        },
    )
    assert members(api, child["id"]) == ["lin-0", "lin-1", "lin-2"]
    nested = api.post("pools", {"name": "nested", "parent_pool_id": windows["id"]})
    assert members(api, nested["id"]) == ["win-0", "win-1"]
    assert [p["name"] for p in api.get(f"pools?parent_pool_id={by_center['id']}")["items"]] == [
        "lin-only"
    ]
    # Editing the filters moves the membership.
    api.patch(
        f"pools/{windows['id']}",
        {"filters": [{"attribute": "os", "op": "equals", "value": "linux"}]},
    )
    assert members(api, windows["id"]) == ["lin-0", "lin-1", "lin-2"]
    assert members(api, nested["id"]) == ["lin-0", "lin-1", "lin-2"]
    status = api.get(f"pools/{by_center['id']}/status")
    assert status["counts"]["total"] == 5
    assert status["summary"].startswith("5 desktops: 0 assigned, 5 free")
    assert status["summary"].endswith("0 users waiting")


def test_pool_nesting_cycles_are_refused(api: Api) -> None:
    a = api.post("pools", {"name": "a"})
    b = api.post("pools", {"name": "b", "parent_pool_id": a["id"]})
    c = api.post("pools", {"name": "c", "parent_pool_id": b["id"]})
    for pool, parent in ((a, c), (a, b), (a, a)):
        text = api.patch(f"pools/{pool['id']}", {"parent_pool_id": parent["id"]}, status=422)
        assert text["detail"] == "a pool cannot be nested inside itself or its own sub-pool"
    assert api.get(f"pools/{a['id']}")["parent_pool_id"] is None
    # Moving a leaf elsewhere is fine, and so is un-nesting.
    assert api.patch(f"pools/{c['id']}", {"parent_pool_id": a["id"]})["parent_pool_id"] == a["id"]
    assert api.patch(f"pools/{c['id']}", {"parent_pool_id": None})["parent_pool_id"] is None
    text = api.delete(f"pools/{a['id']}", status=409)["detail"]
    assert text == "pool a has the sub-pool b; delete or move it first"


def test_pool_references_must_exist_and_leave_nothing_behind(api: Api) -> None:
    before = total(api, "pools")
    for body, words in (
        ({"name": "p", "center_ids": ["nope"]}, "center nope does not exist"),
        ({"name": "p", "desktop_ids": ["nope"]}, "desktop nope does not exist"),
        ({"name": "p", "parent_pool_id": "nope"}, "parent pool nope does not exist"),
        (
            {"name": "p", "provisioning": {"parameters": {"name_template": "{BOGUS}"}}},
            "unknown tag {BOGUS}",
        ),
        ({"name": "p", "filters": [{"attribute": "os", "op": "like"}]}, "filters.0.op"),
    ):
        assert words in api.post("pools", body, status=422)["detail"]
    assert total(api, "pools") == before
    api.post("pools", {"name": "p"})
    assert api.post("pools", {"name": "p"}, status=409)["detail"] == (
        "a pool with that name already exists"
    )


def test_deleting_what_a_policy_or_rule_uses_is_refused_by_name(api: Api) -> None:
    ids = api.seed_pool(1)
    backup = api.post("pools", {"name": "backup"})
    api.post(
        "policies",
        {"name": "second", "entries": [{"pool_id": ids["pool"], "backup_pool_id": backup["id"]}]},
    )
    text = api.delete(f"pools/{ids['pool']}", status=409)["detail"]
    assert text == "pool lab is used by policies lab-policy, second; remove it from them first"
    text = api.delete(f"pools/{backup['id']}", status=409)["detail"]
    assert text == "pool backup is used by policy second; remove it from them first"
    assert api.get(f"pools/{ids['pool']}")["name"] == "lab"
    assert total(api, "pools") == 2
    # And a policy an assignment rule uses stays too.
    text = api.delete(f"policies/{ids['policy']}", status=409)["detail"]
    assert text == "policy lab-policy is used by the assignment rule everyone"


def test_pool_queue_lists_waiting_users(api: Api) -> None:
    ids = api.seed_pool(1, users=3)
    for n in range(3):
        api.login(f"user{n}")
    queue = api.get(f"pools/{ids['pool']}/queue")["items"]
    assert [(q["position"], q["username"]) for q in queue] == [(1, "user1"), (2, "user2")]
    assert api.get(f"pools/{ids['pool']}/status")["counts"]["queued"] == 2


# --- plans and policies --------------------------------------------------------------


def test_plans_crud_and_validation(api: Api) -> None:
    plan = api.post(
        "protocol-plans",
        {
            "name": "rdp-first",
            "protocols": [
                {"protocol": "rdp", "port": 3390, "settings": {"color_depth": 16}},
                {"protocol": "vnc", "settings": {"view_only": True}},
            ],
        },
    )
    assert plan["protocols"][0] == {
        "protocol": "rdp",
        "port": 3390,
        "settings": {"color_depth": 16},
    }
    for body, words in (
        (
            {"protocols": [{"protocol": "rdp"}, {"protocol": "rdp"}]},
            "each protocol may appear once",
        ),
        ({"protocols": []}, "protocols"),
        ({"protocols": [{"protocol": "telnet"}]}, "protocols.0.protocol"),
        ({"protocols": [{"protocol": "rdp", "settings": {"color_depth": 7}}]}, "color_depth"),
        ({"protocols": [{"protocol": "vnc", "settings": {"x": 1}}]}, "vnc has no setting 'x'"),
        ({"protocols": [{"protocol": "ssh", "port": 70000}]}, "port"),
    ):
        assert words in api.post("protocol-plans", {"name": "bad", **body}, status=422)["detail"]
    patched = api.patch(f"protocol-plans/{plan['id']}", {"protocols": [{"protocol": "ssh"}]})
    assert patched["protocols"] == [{"protocol": "ssh", "port": None, "settings": {}}]

    power = api.post(
        "power-plans",
        {"name": "thrifty", "rules": [{"event": "idle", "after_minutes": 30, "action": "suspend"}]},
    )
    assert power["rules"] == [
        {"event": "idle", "after_minutes": 30, "action": "suspend", "warn_minutes": None}
    ]
    bad_rule = {"event": "reboot", "after_minutes": -1, "action": "explode"}
    text = api.post("power-plans", {"name": "x", "rules": [bad_rule]}, status=422)["detail"]
    assert "rules.0.event" in text and "rules.0.after_minutes" in text
    release = api.post(
        "release-plans",
        {"name": "free", "rules": [{"event": "logout", "after_minutes": 0, "action": "release"}]},
    )
    api.post(
        "release-plans",
        {"name": "x", "rules": [{"event": "lock", "after_minutes": 0, "action": "release"}]},
        status=422,
    )
    assert api.patch(f"release-plans/{release['id']}", {"rules": []})["rules"] == []
    for path, item in (
        ("protocol-plans", plan),
        ("power-plans", power),
        ("release-plans", release),
    ):
        assert api.get(f"{path}?name={item['name']}")["total"] == 1
        api.delete(f"{path}/{item['id']}")
        api.get(f"{path}/{item['id']}", status=404)


def test_policy_with_entries(api: Api) -> None:
    ids = api.seed_pool(2)
    backup = api.post("pools", {"name": "backup"})
    proto = api.post("protocol-plans", {"name": "p", "protocols": [{"protocol": "vnc"}]})
    power = api.post("power-plans", {"name": "w"})
    release = api.post("release-plans", {"name": "r"})
    entry = {
        "pool_id": ids["pool"],
        "desktops": 2,
        "assignment": "pooled",
        "ordering": "least_recently_used",
        "backup_pool_id": backup["id"],
        "protocol_plan_id": proto["id"],
        "power_plan_id": power["id"],
        "release_plan_id": release["id"],
        "skip_lost_agents": False,
        "rogue_users": "flag",
        "user_power_actions": ["start", "reboot"],
    }
    policy = api.post("policies", {"name": "full", "max_desktops_per_user": 3, "entries": [entry]})
    assert policy["entries"] == [entry]
    assert api.get(f"policies/{policy['id']}")["entries"] == [entry]
    # Entries are replaced as a whole, in order.
    swapped = api.patch(
        f"policies/{policy['id']}",
        {"entries": [{"pool_id": backup["id"]}, {"pool_id": ids["pool"]}]},
    )
    assert [e["pool_id"] for e in swapped["entries"]] == [backup["id"], ids["pool"]]
    assert swapped["entries"][0]["assignment"] == "persistent"
    # Renaming leaves the entries alone.
    assert len(api.patch(f"policies/{policy['id']}", {"name": "renamed"})["entries"]) == 2
    # Plans in use by a policy cannot go.
    api.patch(f"policies/{policy['id']}", {"entries": [entry]})
    for path, item, label in (
        ("protocol-plans", proto, "protocol plan p"),
        ("power-plans", power, "power plan w"),
        ("release-plans", release, "release plan r"),
    ):
        text = api.delete(f"{path}/{item['id']}", status=409)["detail"]
        assert text == f"{label} is used by policy renamed; change the policy first"


def test_failed_policy_writes_leave_no_policy_and_no_entries(api: Api) -> None:
    ids = api.seed_pool(1)
    before = api.get("policies")
    cases = [
        ({"pool_id": "missing"}, "pool missing does not exist"),
        ({"pool_id": ids["pool"], "backup_pool_id": "gone"}, "backup pool gone does not exist"),
        ({"pool_id": ids["pool"], "protocol_plan_id": "gone"}, "protocol plan gone does not exist"),
        ({"pool_id": ids["pool"], "power_plan_id": "gone"}, "power plan gone does not exist"),
        ({"pool_id": ids["pool"], "release_plan_id": "gone"}, "release plan gone does not exist"),
        ({"pool_id": ids["pool"], "desktops": 0}, "entries.1.desktops"),
        ({"pool_id": ids["pool"], "assignment": "forever"}, "entries.1.assignment"),
    ]
    good = {"pool_id": api.post("pools", {"name": "good"})["id"]}
    for bad, words in cases:
        body = {"name": "half", "entries": [good, bad]}
        assert words in api.post("policies", body, status=422)["detail"]
    dup = {"name": "dup", "entries": [good, good]}
    assert api.post("policies", dup, status=422)["detail"] == "a pool may appear once in a policy"
    assert api.get("policies") == before
    # A failed update keeps the old entries.
    policy_id = ids["policy"]
    old = api.get(f"policies/{policy_id}")
    api.patch(
        f"policies/{policy_id}", {"name": "new", "entries": [good, {"pool_id": "x"}]}, status=422
    )
    api.patch(f"policies/{policy_id}", {"entries": [good, good]}, status=422)
    assert api.get(f"policies/{policy_id}") == old


# --- identity sources, rules and users -----------------------------------------------


def test_identity_sources(api: Api) -> None:
    source = api.post(
        "identity-sources", {"name": "corp", "kind": "local", "domain": "CORP.Example"}
    )
    assert source["domain"] == "corp.example" and source["has_secrets"] is False
    assert (
        "unknown identity source kind 'ldapx'"
        in api.post("identity-sources", {"name": "x", "kind": "ldapx"}, status=422)["detail"]
    )
    assert (
        "identity source params"
        in api.post(
            "identity-sources", {"name": "x", "kind": "local", "params": {"host": "a"}}, status=422
        )["detail"]
    )
    assert api.patch(f"identity-sources/{source['id']}", {"enabled": False})["enabled"] is False
    assert total(api, "identity-sources?kind=local") == 2
    api.post("users", {"identity_source_id": source["id"], "username": "bob"})
    text = api.delete(f"identity-sources/{source['id']}", status=409)["detail"]
    assert text == "identity source corp still has users (e.g. bob)"


def test_assignment_rules(api: Api) -> None:
    ids = api.seed_pool(1)
    source = api.source_id()
    rule = api.post(
        "assignment-rules",
        {
            "identity_source_id": source,
            "name": "lab-staff",
            "position": 5,
            "conditions": {
                "group": "staff",
                "client_cidr": "10.0.0.0/8",
                "attributes": [{"attribute": "dept", "op": "equals", "value": "lab"}],
                "window": {"days": [0, 1, 2, 3, 4], "start": "08:00", "end": "18:00"},
            },
            "policy_id": ids["policy"],
            "role": "helpdesk",
        },
    )
    assert rule["role"] == "helpdesk" and rule["conditions"]["group"] == "staff"
    for body, words in (
        ({"conditions": {"client_cidr": "10.0.0.300/8"}}, "is not a network such as 10.0.0.0/8"),
        ({"conditions": {"window": {"days": [7], "start": "8", "end": "18:00"}}}, "window"),
        ({"policy_id": "nope"}, "policy nope does not exist"),
        ({"role": "emperor"}, "role"),
    ):
        body = {"identity_source_id": source, **body}
        assert words in api.post("assignment-rules", body, status=422)["detail"]
    assert (
        "identity source nope does not exist"
        in api.post("assignment-rules", {"identity_source_id": "nope"}, status=422)["detail"]
    )
    assert api.patch(f"assignment-rules/{rule['id']}", {"policy_id": None})["policy_id"] is None
    assert total(api, "assignment-rules?role=helpdesk") == 1
    api.delete(f"assignment-rules/{rule['id']}")
    assert total(api, "assignment-rules") == 1


def test_users_password_is_write_only(api: Api) -> None:
    source = api.source_id()
    user = api.post(
        "users",
        {
            "identity_source_id": source,
            "username": "carol",
            "password": "first-password",
            "groups": ["staff"],
            "attributes": {"dept": "lab"},
        },
    )
    assert user["has_password"] is True
    text = api.client.get("/api/v1/admin/users", headers=api.headers).text
    assert "first-password" not in text and "password_hash" not in text and "argon2" not in text
    assert api.login("carol", "first-password")["username"] == "carol"
    assert api.patch(f"users/{user['id']}", {"password": "second-password"})["has_password"]
    api.login("carol", "first-password", status=401)
    api.login("carol", "second-password")
    assert api.patch(f"users/{user['id']}", {"password": None})["has_password"] is False
    api.login("carol", "second-password", status=401)
    short = api.patch(f"users/{user['id']}", {"password": "short"}, status=422)["detail"]
    assert short.startswith("password: ")
    assert api.patch(f"users/{user['id']}", {"disabled": True})["disabled"] is True
    assert total(api, "users?disabled=true") == 1
    assert "true or false" in api.get("users?disabled=maybe", status=422)["detail"]
    nameless = {"identity_source_id": source, "username": "bad\nname"}
    assert "control characters" in api.post("users", nameless, status=422)["detail"]
    dup = {"identity_source_id": source, "username": "carol"}
    assert api.post("users", dup, status=409)["detail"] == "a user with that name already exists"


def test_user_delete_rules(api: Api) -> None:
    api.seed_pool(1, users=2)
    api.login("user0")
    user0 = api.get("users?username=user0")["items"][0]
    text = api.delete(f"users/{user0['id']}", status=409)["detail"]
    assert text.startswith("user user0 holds desktop lab-000")
    admin = api.get("users?username=admin")["items"][0]
    text = api.delete(f"users/{admin['id']}", status=409)["detail"]
    assert text == "you cannot delete your own account; ask another administrator"
    user1 = api.get("users?username=user1")["items"][0]
    api.delete(f"users/{user1['id']}")
    assert total(api, "users") == 2


def _tenant_admin_cannot_make_or_touch_global_admins(api: Api) -> None:
    add_local_user(api.ctx, "ta", ADMIN_PASSWORD, role="tenant_admin")
    ta = Api(api.client, api.ctx, api.login("ta", ADMIN_PASSWORD)["token"])
    source = api.source_id()
    admin = ta.get("users?username=admin")["items"][0]
    for attempt in (
        lambda: ta.post(
            "users",
            {"identity_source_id": source, "username": "x", "role": "global_admin"},
            status=403,
        ),
        lambda: ta.post(
            "assignment-rules", {"identity_source_id": source, "role": "global_admin"}, status=403
        ),
        lambda: ta.patch(f"users/{admin['id']}", {"password": "taken-over-1"}, status=403),
        lambda: ta.patch(f"users/{admin['id']}", {"role": "user"}, status=403),
        lambda: ta.delete(f"users/{admin['id']}", status=403),
    ):
        assert "only a global administrator can" in attempt()["detail"]
    api.login("admin", ADMIN_PASSWORD)
    # A tenant admin still manages ordinary users and rules.
    made = ta.post("users", {"identity_source_id": source, "username": "y", "role": "tenant_admin"})
    assert made["role"] == "tenant_admin"
    ta.post(
        "assignment-rules",
        {"identity_source_id": source, "role": "helpdesk", "conditions": {"group": "desk"}},
    )
    # Not one the global administrator signs in through: it would choose their desktops.
    catch_all = {"identity_source_id": source, "role": "helpdesk"}
    assert (
        "admin, whose role is global_admin" in ta.post("assignment-rules", catch_all, 403)["detail"]
    )
    assert (
        ta.get("tenants", status=403)["detail"] == "only a global administrator can manage tenants"
    )


def _readers_read_and_do_not_write(api: Api) -> None:
    api.seed_pool(1)
    for role in ("helpdesk", "auditor"):
        add_local_user(api.ctx, role, USER_PASSWORD, role=role)
        reader = Api(api.client, api.ctx, api.login(role)["token"])
        assert reader.get("pools")["total"] == 1
        text = reader.post("pools", {"name": "nope"}, status=403)["detail"]
        assert text == f"Your role {role} does not allow pools:create."
    assert total(api, "pools") == 1


# --- assignments, sessions, events ---------------------------------------------------


def test_admin_assignments_and_queue_hand_off(api: Api) -> None:
    ids = api.seed_pool(2, users=3)
    desktops = {d["name"]: d for d in api.get("desktops")["items"]}
    users = {u["username"]: u["id"] for u in api.get("users")["items"]}
    first = api.post(
        "assignments",
        {
            "desktop_id": desktops["lab-000"]["id"],
            "user_id": users["user0"],
            "pool_id": ids["pool"],
        },
    )
    assert first["user_id"] == users["user0"] and first["kind"] == "persistent"
    again = {"desktop_id": desktops["lab-000"]["id"], "user_id": users["user1"]}
    assert (
        api.post("assignments", again, status=409)["detail"]
        == "desktop lab-000 is already assigned"
    )
    for body, words in (
        ({"desktop_id": "nope", "user_id": users["user1"]}, "desktop nope does not exist"),
        ({"desktop_id": desktops["lab-001"]["id"], "user_id": "nope"}, "user nope does not exist"),
        (
            {"desktop_id": desktops["lab-001"]["id"], "user_id": users["user1"], "pool_id": "x"},
            "pool x does not exist",
        ),
        (
            {"desktop_id": desktops["lab-001"]["id"], "user_id": users["user1"], "kind": "x"},
            "kind",
        ),
    ):
        assert words in api.post("assignments", body, status=422)["detail"]
    other_pool = api.post("pools", {"name": "empty", "desktop_ids": [desktops["lab-000"]["id"]]})
    body = {
        "desktop_id": desktops["lab-001"]["id"],
        "user_id": users["user1"],
        "pool_id": other_pool["id"],
    }
    assert (
        api.post("assignments", body, status=422)["detail"]
        == "desktop lab-001 is not in pool empty"
    )
    # user1 gets the last desktop by logging in, user2 waits.
    api.login("user1")
    queued = api.login("user2")["offers"][0]
    assert queued["status"] == "queued" and queued["position"] == 1
    listing = api.get("assignments")
    assert listing["total"] == 2
    assert api.get(f"assignments?user_id={users['user0']}")["items"][0]["desktop_name"] == "lab-000"
    # Taking lab-000 back hands it to the first in the queue.
    api.delete(f"assignments/{desktops['lab-000']['id']}")
    assert api.get(f"desktops/{desktops['lab-000']['id']}")["assigned_user_id"] == users["user2"]
    assert api.get(f"pools/{ids['pool']}/queue")["items"] == []
    text = api.client.delete(
        f"/api/v1/admin/assignments/{desktops['lab-001']['id']}", headers=api.headers
    )
    assert text.status_code == 204
    text = api.delete(f"assignments/{desktops['lab-001']['id']}", status=409)["detail"]
    assert text == "desktop lab-001 is not assigned to anyone"
    api.delete("assignments/nope", status=404)
    kinds = [e["detail"].get("reason") for e in api.get("events?kind=assign")["items"]]
    assert kinds.count("queue") == 1 and kinds.count("admin") == 1


def test_sessions_list(api: Api) -> None:
    api.seed_pool(1, users=1)
    desktop = api.login("user0")["offers"][0]["desktop"]
    user = api.get("users?username=user0")["items"][0]
    tenant = user["tenant_id"]
    now = datetime.now(UTC)
    with api.ctx.db.write() as session:
        for n, state in enumerate(("connected", "logged_out", "connected")):
            session.execute(
                insert(SessionRow).values(
                    id=f"s{n}",
                    tenant_id=tenant,
                    desktop_id=desktop["id"],
                    user_id=user["id"],
                    state=state,
                    protocol="rdp",
                    client_address="10.1.1.1",
                    started_at=now - timedelta(minutes=10 - n),
                    updated_at=now,
                )
            )
    page = api.get("sessions")
    assert page["total"] == 3 and [s["id"] for s in page["items"]] == ["s2", "s1", "s0"]
    assert api.get("sessions?state=connected")["total"] == 2
    assert (
        api.get(f"sessions?desktop_id={desktop['id']}&limit=1&offset=1")["items"][0]["id"] == "s1"
    )
    assert api.get("sessions?user_id=nobody")["total"] == 0


def test_events_show_admin_changes(api: Api) -> None:
    start = datetime.now(UTC) - timedelta(seconds=5)
    pool = api.post("pools", {"name": "audited"})
    api.patch(f"pools/{pool['id']}", {"description": "changed"})
    api.delete(f"pools/{pool['id']}")
    api.post("pools", {"name": "audited", "center_ids": ["nope"]}, status=422)
    events = api.get(f"events?since={start.isoformat().replace('+00:00', 'Z')}")["items"]
    admin = [
        (e["kind"], e["detail"]["resource"], e["detail"]["name"], e["actor"])
        for e in events
        if e["kind"].startswith("admin.") and e["detail"]["resource"] == "pools"
    ]
    assert admin == [
        ("admin.delete", "pools", "audited", "admin"),
        ("admin.update", "pools", "audited", "admin"),
        ("admin.create", "pools", "audited", "admin"),
    ]
    assert api.get("events?kind=admin.delete")["total"] == 1
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert api.get(f"events?since={future}")["total"] == 0
    assert "since" in api.get("events?since=yesterday", status=422)["detail"]


# --- listing: pagination and filters -------------------------------------------------


def test_pagination_and_filters(api: Api) -> None:
    for n in range(7):
        api.post("power-plans", {"name": f"plan-{n}"})
    page = api.get("power-plans?limit=3")
    assert (page["total"], page["limit"], page["offset"], len(page["items"])) == (7, 3, 0, 3)
    names = [p["name"] for p in page["items"]]
    names += [p["name"] for p in api.get("power-plans?limit=3&offset=3")["items"]]
    last = api.get("power-plans?limit=3&offset=6")
    assert len(last["items"]) == 1 and last["total"] == 7
    names += [p["name"] for p in last["items"]]
    assert sorted(names) == [f"plan-{n}" for n in range(7)]
    assert api.get("power-plans?offset=50")["items"] == []
    assert [p["name"] for p in api.get("power-plans?name=plan-3")["items"]] == ["plan-3"]
    for query, words in (
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("offset=-1", "offset"),
        ("limit=ten", "limit"),
        ("colour=red", "unknown query parameter 'colour'"),
    ):
        assert words in api.get(f"power-plans?{query}", status=422)["detail"]
    text = api.get("pools?bogus=1", status=422)["detail"]
    assert text.startswith("unknown query parameter 'bogus'")
    assert "name" in text and "parent_pool_id" in text
    assert "unknown query parameter" in api.get("events?actor=me", status=422)["detail"]
    assert "unknown query parameter" in api.get("assignments?desktop=x", status=422)["detail"]


def _unknown_route_and_method(api: Api) -> None:
    response = api.client.get("/api/v1/admin/nothing", headers=api.headers)
    assert detail(response, 404) == "there is no /api/v1/admin/nothing here"
    response = api.client.put("/api/v1/admin/pools", headers=api.headers)
    assert detail(response, 405) == "/api/v1/admin/pools does not answer PUT"


def _a_value_the_database_cannot_hold_is_invalid_input_not_a_crash(api: Api) -> None:
    """Behind the API's own limits: the repository turns a refused value into a 422."""
    refused = pytest.raises(InvalidInput, match="too long or too large for the database")
    with refused, api.ctx.db.write() as session:
        Repository(Tenant, "tenant").add(session, Tenant(name="big", quota_desktops=10**20))
    assert api.get("tenants?name=big")["total"] == 0


def _free_form_json_nests_at_most_32_deep(api: Api) -> None:
    center = static_center(api, "c", machines("m", 1))
    desktop = api.get("desktops")["items"][0]["id"]
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(40):
        deep = {"n": deep}
    text = api.patch(f"desktops/{desktop}", {"attributes": deep}, status=422)["detail"]
    assert text.endswith("nests deeper than 32 levels")
    assert api.patch(f"desktops/{desktop}", {"attributes": {"a": {"b": [1, {"c": 2}]}}})
    assert api.get(f"centers/{center['id']}")["status"] == "ok"


def test_secrets_are_write_only_and_sealed_at_rest(api: Api) -> None:
    _center_secrets_are_write_only_and_sealed(api)
    _identity_source_secrets_are_write_only(api)


def test_center_bad_input_and_a_machine_listed_twice(api: Api) -> None:
    _center_bad_input(api)
    _center_listing_a_machine_twice_is_an_error_not_a_crash(api)


def test_roles_readers_and_tenant_admins(api: Api) -> None:
    _readers_read_and_do_not_write(api)
    _tenant_admin_cannot_make_or_touch_global_admins(api)


def test_unknown_routes_and_the_last_lines_of_defence(api: Api) -> None:
    _unknown_route_and_method(api)
    _a_value_the_database_cannot_hold_is_invalid_input_not_a_crash(api)
    _free_form_json_nests_at_most_32_deep(api)

"""A configuration change reloads, in every broker's cache, the rows of the tenant it
changed, not every tenant's: and the view so patched is exactly what a whole load gives,
change after change, in the changed tenant and beside it. A version on record of no
tenant (an older node's, or pruned) reloads everything, as before."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import delete, update

from deskbroker.bootstrap import add_local_user
from deskbroker.services import config_cache
from deskbroker.services.config_cache import ConfigView, build_view
from deskbroker.services.context import BrokerContext
from deskbroker.store import snapshot
from deskbroker.store.config_version import bump_config_version
from deskbroker.store.tables import BrokerState, ConfigChange, Pool
from tests.helpers import USER_PASSWORD, Api, bearer, tenant_admin_of

# A whole load as the database holds it, not counted among the cache's loads.
WHOLE = snapshot.load


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The tenants each load of the cache asked for (None: every tenant's rows)."""
    asked: list[Any] = []
    real = snapshot.load

    def spying(session: Any, tenant_ids: Any = None, version: Any = None) -> Any:
        asked.append(None if tenant_ids is None else set(tenant_ids))
        return real(session, tenant_ids, version)

    monkeypatch.setattr(config_cache.snapshot, "load", spying)
    yield asked


def _whole(ctx: BrokerContext) -> ConfigView:
    with ctx.db.read() as session:
        return build_view(WHOLE(session))


def _cached(ctx: BrokerContext) -> ConfigView:
    return ctx.cache.current(ctx.db, fresh=True)


def _world(api: Api, name: str) -> tuple[Api, dict[str, Any]]:
    """A tenant with what a login resolves: a source and a rule, a policy offering two
    pools (one a backup) with a protocol plan, and a custom role."""
    admin = tenant_admin_of(api, name, f"{name}-boss")
    pool = admin.post("pools", {"name": f"{name}-desks"})
    backup = admin.post("pools", {"name": f"{name}-spare"})
    plan = admin.post("protocol-plans", {"name": "vnc", "protocols": [{"protocol": "vnc"}]})
    entry = {"pool_id": pool["id"], "backup_pool_id": backup["id"], "protocol_plan_id": plan["id"]}
    policy = admin.post("policies", {"name": "staff", "entries": [entry]})
    source = admin.post("identity-sources", {"name": "extra", "kind": "local"})
    rule = admin.post(
        "assignment-rules",
        {"identity_source_id": source["id"], "name": "all", "policy_id": policy["id"]},
    )
    role = admin.post("roles", {"name": "viewer", "permissions": ["pools:read"]})
    ids = {"pool": pool, "backup": backup, "plan": plan, "policy": policy}
    return admin, {**ids, "source": source, "rule": rule, "role": role}


def test_each_change_reloads_its_tenant_only_and_matches_a_whole_load(
    api: Api, ctx: BrokerContext, loads: list[Any]
) -> None:
    acme, a = _world(api, "acme")
    _globex, g = _world(api, "globex")
    acme_id = a["pool"]["tenant_id"]
    assert _cached(ctx) == _whole(ctx)
    steps = [
        lambda: acme.patch(f"pools/{a['pool']['id']}", {"name": "acme-renamed"}),
        lambda: acme.patch(f"policies/{a['policy']['id']}", {"max_desktops_per_user": 3}),
        lambda: acme.patch(
            f"protocol-plans/{a['plan']['id']}", {"protocols": [{"protocol": "rdp"}]}
        ),
        lambda: acme.patch(f"roles/{a['role']['id']}", {"permissions": ["desktops:read"]}),
        lambda: acme.delete(f"assignment-rules/{a['rule']['id']}"),
        lambda: acme.patch(f"identity-sources/{a['source']['id']}", {"enabled": False}),
        lambda: acme.post("pools", {"name": "acme-new"}),
        lambda: acme.patch(f"policies/{a['policy']['id']}", {"entries": []}),
        lambda: acme.delete(f"protocol-plans/{a['plan']['id']}"),
        lambda: acme.delete(f"roles/{a['role']['id']}"),
    ]
    for number, step in enumerate(steps):
        loads.clear()
        step()
        assert _cached(ctx) == _whole(ctx), f"after step {number}"
        assert loads == [{acme_id}], f"step {number} reloaded {loads}"
    # Globex's rows were never reloaded, and are still all there.
    view = _cached(ctx)
    assert view.pools[g["pool"]["id"]].name == "globex-desks"
    assert g["plan"]["id"] in view.protocol_plans
    assert view.policies[g["policy"]["id"]].entries[0].pool_name == "globex-desks"
    assert view.policies[a["policy"]["id"]].entries == ()
    assert a["plan"]["id"] not in view.protocol_plans


def test_tenants_made_changed_and_deleted_come_and_go_in_the_cache(
    api: Api, ctx: BrokerContext, loads: list[Any]
) -> None:
    _cached(ctx)
    made = api.post("tenants", {"name": "initech"})
    assert _cached(ctx).tenants_by_name["initech"] == made["id"]
    assert loads[-1] == {made["id"]}
    api.patch(f"tenants/{made['id']}", {"display_name": "Initrode", "quota_sessions": 5})
    view = _cached(ctx)
    assert made["id"] in view.session_quota_tenants
    assert view == _whole(ctx)
    assert loads[-1] == {made["id"]}
    api.delete(f"tenants/{made['id']}")
    view = _cached(ctx)
    assert made["id"] not in view.tenants_by_name.values()
    assert made["id"] not in view.session_quota_tenants
    assert view == _whole(ctx)
    assert loads[-1] == {made["id"]}


def test_a_version_of_no_recorded_tenant_reloads_everything(
    api: Api, ctx: BrokerContext, loads: list[Any]
) -> None:
    _acme, a = _world(api, "acme")
    _cached(ctx)
    # An older node moves the version with no record of which tenant it changed.
    with ctx.db.write() as session:
        session.execute(
            update(BrokerState)
            .where(BrokerState.id == 1)
            .values(config_version=BrokerState.config_version + 1)
        )
    loads.clear()
    assert _cached(ctx) == _whole(ctx)
    assert loads == [None]
    # Records pruned past a cache's version: the same (another node's write, whose
    # record is gone by the time this node looks).
    with ctx.db.write() as session:
        session.execute(update(Pool).where(Pool.id == a["pool"]["id"]).values(name="acme-once"))
        bump_config_version(session, a["pool"]["tenant_id"])
    with ctx.db.write() as session:  # the version moves as the write above commits
        session.execute(delete(ConfigChange))
    loads.clear()
    assert _cached(ctx).pools[a["pool"]["id"]].name == "acme-once"
    assert loads == [None]


def test_a_write_landing_during_a_check_leaves_the_view_stale(
    api: Api, ctx: BrokerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This node's write that commits after a concurrent check read the version (but
    before it called the view checked) is not lost: the view stays stale, and the
    writer's next look sees its own write, not one up to two seconds later."""
    acme, a = _world(api, "acme")
    _cached(ctx)
    real = config_cache.config_version

    def write_lands_meanwhile(session: Any) -> int:
        version = real(session)
        monkeypatch.setattr(config_cache, "config_version", real)
        acme.patch(f"pools/{a['pool']['id']}", {"name": "acme-meanwhile"})  # stale() too
        return version

    monkeypatch.setattr(config_cache, "config_version", write_lands_meanwhile)
    ctx.cache.current(ctx.db, fresh=True)  # the check that read the version first
    assert ctx.cache.peek(ctx.db).pools[a["pool"]["id"]].name == "acme-meanwhile"


def test_a_source_made_elsewhere_routes_the_next_sign_in(api: Api, ctx: BrokerContext) -> None:
    """A source and its user made a moment ago by another broker or a tool (here the
    bootstrap, straight to the database): this broker's view does not hold the source
    yet, and the sign-in that needs it reads the newer version and is routed there,
    not refused as a wrong password."""
    made = api.post("tenants", {"name": "initech"})
    assert _cached(ctx).sources_by_tenant.get(made["id"]) is None  # the tenant, no source
    add_local_user(ctx, "peter", USER_PASSWORD, role="tenant_admin", tenant_name="initech")
    signed = api.client.post(
        "/api/v1/auth/login",
        json={"username": "peter", "password": USER_PASSWORD, "tenant": "initech"},
    )
    assert signed.status_code == 200, signed.text
    # And a wrong password there is still refused as one.
    wrong = api.client.post(
        "/api/v1/auth/login",
        json={"username": "peter", "password": "not-his-password", "tenant": "initech"},
    )
    assert wrong.status_code == 401, wrong.text


def test_a_document_applied_reloads_its_tenant_only_and_an_empty_one_nothing(
    api: Api, ctx: BrokerContext, loads: list[Any]
) -> None:
    """A configuration apply told the node's cache to forget the whole view: a document
    applied in a loop (an empty one changes nothing) made the node reload every tenant's
    configuration, its logins waiting meanwhile."""
    acme, a = _world(api, "acme")
    _world(api, "globex")
    assert _cached(ctx) == _whole(ctx)
    loads.clear()
    empty = acme.client.post("/api/v1/admin/config/apply", json={}, headers=bearer(acme.token))
    assert empty.status_code == 200, empty.text
    assert empty.json()["changes"] == []
    assert _cached(ctx) == _whole(ctx)
    assert loads == []
    document = acme.client.get("/api/v1/admin/config", headers=bearer(acme.token)).json()
    [pool] = [p for p in document["pools"] if p["name"] == "acme-desks"]
    pool["description"] = "by document"
    changed = acme.client.post(
        "/api/v1/admin/config/apply", json=document, headers=bearer(acme.token)
    )
    assert changed.status_code == 200, changed.text
    assert [c["name"] for c in changed.json()["changes"]] == ["acme-desks"]
    assert loads == [{a["pool"]["tenant_id"]}]
    assert _cached(ctx) == _whole(ctx)

"""A configuration document's pools are refreshed once per apply, not once per pool
(issue 14: each pool written recomputed every pool of the tenant, so an apply was
quadratic in its pools): the members come out as a refresh per pool left them, the
guard and the stronger-account rule hold as before, and a membership read inside a
batch of pool writes sees those writes."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from sqlalchemy import select

from deskbroker.bootstrap import add_local_user
from deskbroker.errors import Forbidden
from deskbroker.security import TokenClaims
from deskbroker.services import queues, standing
from deskbroker.services.context import BrokerContext
from deskbroker.services.write_context import attach_actor
from deskbroker.store import membership
from deskbroker.store.tables import Desktop, Pool, PoolMember, Tenant, User
from tests.helpers import USER_PASSWORD, Api, counting
from tests.test_config_code import export, rows, send


def members_by_name(ctx: BrokerContext, tenant_id: str) -> dict[str, set[str]]:
    """Each pool of the tenant by name, with its members by name."""
    with ctx.db.read() as session:
        pools = session.scalars(select(Pool.name).where(Pool.tenant_id == tenant_id)).all()
        held = session.execute(
            select(Pool.name, Desktop.name)
            .join(PoolMember, PoolMember.pool_id == Pool.id)
            .join(Desktop, Desktop.id == PoolMember.desktop_id)
            .where(Pool.tenant_id == tenant_id)
        ).all()
    out: dict[str, set[str]] = {name: set() for name in pools}
    for pool, desktop in held:
        out[pool].add(desktop)
    return out


def assert_refresh_changes_nothing(ctx: BrokerContext, tenant_id: str) -> None:
    """The members are those of the pools' definitions as they stand: a refresh now
    adds and drops nothing."""
    before = members_by_name(ctx, tenant_id)
    with ctx.db.write() as session:
        assert membership.refresh(session, tenant_id) == {}
    assert members_by_name(ctx, tenant_id) == before


def document(pools: int, shift: int) -> dict[str, Any]:
    """A center of twelve machines and ``pools`` pools over it of every shape: by a list,
    by a filter, nested in ``all``, nested in the pool before, by filters alone;
    ``shift`` moves every pool one machine on (each pool an update)."""
    machines = [
        {
            "name": f"m{k:02d}",
            "address": f"127.0.3.{k + 1}",
            "attributes": {"tier": "gold" if k % 2 else "plain"},
        }
        for k in range(12)
    ]
    entries: list[dict[str, Any]] = [{"name": "all", "centers": ["lab"]}]
    for i in range(pools - 1):
        k = (i + shift) % 12
        pool: dict[str, Any] = {"name": f"p{i:02d}", "description": f"shift {shift}"}
        shape = i % 5
        if shape == 0:
            pool["desktops"] = [{"center": "lab", "name": f"m{(k + j) % 12:02d}"} for j in (0, 1)]
        elif shape == 4:
            # Filters alone: any center's machines.
            pool["filters"] = [{"attribute": "tier", "op": "equals", "value": "gold"}]
        else:
            pool["centers"] = ["lab"]
            pool["filters"] = [{"attribute": "name", "op": "not_equals", "value": f"m{k:02d}"}]
            if shape == 2:
                pool["parent"] = "all"
            elif shape == 3:
                pool["parent"] = f"p{i - 1:02d}"
        entries.append(pool)
    return {
        "centers": [{"name": "lab", "kind": "static", "params": {"machines": machines}}],
        "pools": entries,
    }


def with_policy(doc: dict[str, Any]) -> dict[str, Any]:
    names = [p["name"] for p in doc["pools"]][:4]
    return {**doc, "policies": [{"name": "staff", "entries": [{"pool": n} for n in names]}]}


def test_one_apply_leaves_the_members_a_refresh_per_pool_left(api: Api) -> None:
    """One tenant gets each document in one apply; the other pool by pool (a document
    per pool, each refreshed as it is written: what every apply did before)."""
    at_once = api.post("tenants", {"name": "at-once"})["id"]
    by_pool = api.post("tenants", {"name": "by-pool"})["id"]
    n = 12
    first, second = document(n, 0), document(n, 5)
    send(api, "apply", with_policy(first), tenant_id=at_once)
    for k in range(1, n + 1):
        send(api, "apply", {**first, "pools": first["pools"][:k]}, tenant_id=by_pool)
    send(api, "apply", with_policy(first), tenant_id=by_pool)
    created = members_by_name(api.ctx, at_once)
    assert created == members_by_name(api.ctx, by_pool)
    assert created["all"] == {f"m{k:02d}" for k in range(12)}
    assert created["p00"] == {"m00", "m01"} and created["p04"] == created["p09"]

    changed = send(api, "apply", with_policy(second), tenant_id=at_once)
    assert sum(c["action"] == "update" for c in changed["changes"]) == n - 1
    for k in range(1, n + 1):
        mixed = second["pools"][:k] + first["pools"][k:]
        send(api, "apply", {**first, "pools": mixed}, tenant_id=by_pool)
    send(api, "apply", with_policy(second), tenant_id=by_pool)
    updated = members_by_name(api.ctx, at_once)
    assert updated == members_by_name(api.ctx, by_pool)
    assert updated != created and updated["p00"] == {"m05", "m06"}
    for tenant in (at_once, by_pool):
        assert_refresh_changes_nothing(api.ctx, tenant)
    # A plan rehearses the same single refresh: the same document again changes nothing.
    planned = send(api, "plan", with_policy(second), tenant_id=at_once)
    assert planned["changes"] == [] and planned["refused"] is None


def _member_reads(statements: list[str]) -> int:
    """The statements that read the members (each refresh reads them once)."""
    return sum(bool(re.match(r"\s*SELECT\b.*\bFROM pool_members\b", s, re.S)) for s in statements)


def test_an_apply_refreshes_the_pools_once_whatever_their_number(api: Api) -> None:
    """What made an apply quadratic: every pool written read every pool's members
    again. Now the reads of the members do not grow with the document's pools."""
    reads = []
    for n, name in ((6, "six"), (30, "thirty")):
        tenant = api.post("tenants", {"name": name})["id"]
        with counting() as statements:
            send(api, "apply", document(n, 0), tenant_id=tenant)
        created = _member_reads(statements)
        with counting() as statements:
            send(api, "apply", document(n, 3), tenant_id=tenant)
        reads.append((created, _member_reads(statements)))
        assert_refresh_changes_nothing(api.ctx, tenant)
    assert reads[0] == reads[1], reads
    assert max(reads[1]) <= 3, reads


def _gold_offered_to_the_global_admin(api: Api) -> dict[str, str]:
    """A global administrator's center (vouched for) of gold-1 and plain-1, and a pool
    of every gold machine, by its filters alone, offered to everyone who signs in
    through the local source (the global administrator among them): a guarded pool."""
    machines = [
        {"name": "gold-1", "address": "192.0.2.10", "attributes": {"tier": "gold"}},
        {"name": "plain-1", "address": "192.0.2.11"},
    ]
    center = api.post("centers", {"name": "gc", "kind": "static", "params": {"machines": machines}})
    gold = api.post(
        "pools",
        {"name": "gold", "filters": [{"attribute": "tier", "op": "equals", "value": "gold"}]},
    )
    policy = api.post("policies", {"name": "gold", "entries": [{"pool_id": gold["id"]}]})
    api.post(
        "assignment-rules",
        {"identity_source_id": api.source_id(), "name": "all", "policy_id": policy["id"]},
    )
    desktops = {d["name"]: d["id"] for d in api.get(f"desktops?center_id={center['id']}")["items"]}
    return {"center": center["id"], "gold": gold["id"], **desktops}


def _tenant_admin(api: Api) -> Api:
    """A tenant administrator of the global administrator's own (default) tenant: the
    attacker, whose power is this account alone."""
    add_local_user(api.ctx, "tad", USER_PASSWORD, role="tenant_admin")
    return Api(api.client, api.ctx, api.login("tad")["token"])


def _managed(doc: dict[str, Any]) -> dict[str, Any]:
    """The centers and pools of an exported document, the rest left unmanaged."""
    return {"centers": doc["centers"], "pools": doc["pools"]}


def test_the_guard_holds_when_the_pools_are_refreshed_once(api: Api) -> None:
    """A tenant administrator's document brings a center of their own whose machine
    matches the guarded pool's filters, and pools over it and under the guarded pool:
    the one refresh keeps their machine out of the global administrator's pool."""
    ids = _gold_offered_to_the_global_admin(api)
    tad = _tenant_admin(api)
    doc = _managed(export(tad))
    evil = {"name": "evil-1", "address": "198.51.100.66", "attributes": {"tier": "gold"}}
    doc["centers"].append({"name": "evil", "kind": "static", "params": {"machines": [evil]}})
    gold_filter = [{"attribute": "tier", "op": "equals", "value": "gold"}]
    doc["pools"] += [
        {"name": f"mine-{i}", "filters": gold_filter, "centers": ["evil"] if i % 2 else []}
        for i in range(8)
    ]
    doc["pools"].append({"name": "under-gold", "parent": "gold"})
    applied = send(tad, "apply", doc)
    assert {c["name"] for c in applied["changes"]} >= {"evil", "mine-0", "under-gold"}
    tenant = api.get(f"pools/{ids['gold']}")["tenant_id"]
    held = members_by_name(api.ctx, tenant)
    assert held["gold"] == {"gold-1"}
    assert held["under-gold"] == {"gold-1"}
    assert held["mine-0"] == {"gold-1", "evil-1"} and held["mine-1"] == {"evil-1"}
    assert_refresh_changes_nothing(api.ctx, tenant)


def test_a_document_that_changes_the_global_admins_pool_leaves_nothing(api: Api) -> None:
    """The pool the global administrator is offered is written last, after pools the
    one refresh would cover: refused, and none of the document is left, members
    included."""
    _gold_offered_to_the_global_admin(api)
    tad = _tenant_admin(api)
    doc = _managed(export(tad))
    [gold] = [p for p in doc["pools"] if p["name"] == "gold"]
    gold["filters"] = []  # every machine of the tenant, the tenant admin's among them
    doc["pools"] = [
        *({"name": f"new-{i}", "filters": gold["filters"]} for i in range(6)),
        *doc["pools"],
    ]
    before = rows(api.ctx)
    refused = send(tad, "apply", doc, status=403)
    assert "admin, whose role is global_admin, gets desktops through it" in refused["detail"]
    assert refused["detail"].startswith("pools[6]")
    assert rows(api.ctx) == before
    planned = send(tad, "plan", doc)
    assert planned["refused"]["status"] == 403 and rows(api.ctx) == before


def _claims(ctx: BrokerContext, username: str) -> TokenClaims:
    with ctx.db.read() as session:
        user = session.scalars(select(User).where(User.username == username)).one()
        tenant = session.scalars(select(Tenant.id).where(Tenant.id == user.tenant_id)).one()
        return TokenClaims(
            user_id=user.id,
            tenant_id=tenant,
            role=user.role,
            username=user.username,
            expires_at=int(time.time()) + 600,
            token_id=f"test-{username}",
        )


def test_a_membership_read_inside_a_batch_sees_its_pool_writes(api: Api) -> None:
    """Inside a batch of pool writes, a check that reads the members (here: whether a
    desktop reaches a global administrator's pool) refreshes them first. The global
    administrator's pool is made to take plain-1 by its filters, in the batch; the
    tenant administrator's change of plain-1 is then refused, as it would be after a
    refresh per pool."""
    ids = _gold_offered_to_the_global_admin(api)
    _tenant_admin(api)
    ga, tad = _claims(api.ctx, "admin"), _claims(api.ctx, "tad")
    with (
        pytest.raises(Forbidden, match="gets desktops through it"),
        api.ctx.db.write() as session,
        queues.pool_writes_batched(session),
    ):
        attach_actor(session, api.ctx, ga)
        gold = session.get(Pool, ids["gold"])
        assert gold is not None
        gold.filters = [{"attribute": "name", "op": "begins_with", "value": "plain"}]
        session.flush()
        queues.refresh_after_pool_write(session, gold.tenant_id)
        # Owed, not done yet: the members are those of before.
        assert set(membership.pool_members(session, gold.id)) == {ids["gold-1"]}
        attach_actor(session, api.ctx, tad)
        plain = session.get(Desktop, ids["plain-1"])
        standing.check_reach(session, plain, "desktop", "change")
    # Rolled back: the pool and its members as they were.
    assert {m["name"] for m in api.get(f"pools/{ids['gold']}/members")["items"]} == {"gold-1"}


def test_a_batch_refreshes_as_it_ends_and_a_lone_write_at_once(api: Api) -> None:
    """The admin API's one-pool writes refresh in their own write, as before; a batch
    owes its refresh until it ends, still inside the unit."""
    ids = _gold_offered_to_the_global_admin(api)
    alone = api.post("pools", {"name": "alone", "desktop_ids": [ids["plain-1"]]})
    assert {m["name"] for m in api.get(f"pools/{alone['id']}/members")["items"]} == {"plain-1"}
    api.patch(f"pools/{alone['id']}", {"desktop_ids": [ids["gold-1"]]})
    assert {m["name"] for m in api.get(f"pools/{alone['id']}/members")["items"]} == {"gold-1"}
    with api.ctx.db.write() as session:
        pool = session.get(Pool, alone["id"])
        assert pool is not None
        with queues.pool_writes_batched(session):
            pool.desktop_ids = [ids["plain-1"]]
            session.flush()
            queues.refresh_after_pool_write(session, pool.tenant_id)
            assert membership.pool_members(session, pool.id) == [ids["gold-1"]]
        assert membership.pool_members(session, pool.id) == [ids["plain-1"]]

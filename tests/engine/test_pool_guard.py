"""A pool offered to a global administrator that names no centers takes by its filters
only the desktops of centers a global administrator set up: a tenant administrator's
own cloud names its VMs, and its scans run outside any admin write, where no
stronger-account check could refuse them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from cloudsim.server import CloudSim
from deskbroker.bootstrap import add_local_user
from deskbroker.domain.membership import DesktopFacts, PoolDefinition, members
from deskbroker.store import membership
from deskbroker.store.tables import Center
from tests.engine.conftest import openstack_center
from tests.helpers import USER_PASSWORD, Api, scan_now

GOLD = [{"attribute": "name", "op": "begins_with", "value": "gold-"}]


def _tenant_admin(api: Api) -> Api:
    add_local_user(api.ctx, "tad", USER_PASSWORD, role="tenant_admin")
    return Api(api.client, api.ctx, api.login("tad")["token"])


def _offer(api: Api, pool_id: str, name: str) -> None:
    """Offer the pool through a rule of the source the global administrator signs in
    through."""
    policy = api.post("policies", {"name": name, "entries": [{"pool_id": pool_id}]})
    api.post(
        "assignment-rules",
        {"identity_source_id": api.source_id(), "name": name, "policy_id": policy["id"]},
    )


def _members(api: Api, pool_id: str) -> set[str]:
    return {m["name"] for m in api.get(f"pools/{pool_id}/members")["items"]}


def _cloud_names(api: Api, center_id: str) -> set[str]:
    return {d["name"] for d in api.get(f"desktops?center_id={center_id}&limit=100")["items"]}


def test_a_tenant_admins_cloud_feeds_no_pool_offered_to_a_global_admin(
    api: Api, sim: CloudSim
) -> None:
    vault = api.post(
        "centers",
        {
            "name": "vault",
            "kind": "static",
            "params": {"machines": [{"name": "gold-1", "address": "192.0.2.10"}]},
        },
    )
    assert vault["vouched_by_global_admin"] is True
    gold = api.post("pools", {"name": "gold", "filters": GOLD})
    _offer(api, gold["id"], "gold")
    tad = _tenant_admin(api)
    cloud = openstack_center(tad, sim)
    assert cloud["vouched_by_global_admin"] is False
    sim.seed_servers(2, name_prefix="gold-evil")
    scanned = scan_now(tad, cloud["id"])
    assert scanned["status"] == "ok", scanned
    assert _cloud_names(api, cloud["id"]) == {"gold-evil-00000", "gold-evil-00001"}
    # The scan imported the attacker's VMs, and the global admin's pool took none.
    assert _members(api, gold["id"]) == {"gold-1"}
    preview = api.post(
        "pools/preview", {"pool_id": gold["id"], "name": "gold", "filters": GOLD}, status=200
    )
    assert {d["name"] for d in preview["desktops"]} == {"gold-1"}
    # A pool no stronger account is offered takes them by the same filters.
    mine = tad.post("pools", {"name": "mine", "filters": GOLD})
    assert _members(api, mine["id"]) == {"gold-1", "gold-evil-00000", "gold-evil-00001"}
    # Nor may the tenant admin vouch for their cloud; a global administrator's other
    # change (a new scan interval) says nothing of who controls the cloud either.
    refused = tad.patch(f"centers/{cloud['id']}", {"vouched_by_global_admin": True}, 403)
    assert "only a global administrator (in person) can vouch" in refused["detail"]
    changed = api.patch(f"centers/{cloud['id']}", {"scan_interval_s": 300})
    assert changed["vouched_by_global_admin"] is False
    assert _members(api, gold["id"]) == {"gold-1"}
    # Their explicit word vouches for it: its desktops join at once, and from then on the
    # tenant admin may not change the center (the global admin's pool holds its desktops).
    api.patch(f"centers/{cloud['id']}", {"vouched_by_global_admin": True})
    assert _members(api, gold["id"]) == {"gold-1", "gold-evil-00000", "gold-evil-00001"}
    tad.patch(f"centers/{cloud['id']}", {"scan_interval_s": 120}, 403)
    # Withdrawn, the vouch takes its desktops out again at once.
    api.patch(f"centers/{cloud['id']}", {"vouched_by_global_admin": False})
    assert _members(api, gold["id"]) == {"gold-1"}


def test_offering_a_tenant_admins_pool_to_a_global_admin_drops_its_unvouched_desktops(
    api: Api, sim: CloudSim
) -> None:
    tad = _tenant_admin(api)
    cloud = openstack_center(tad, sim)
    sim.seed_servers(1, name_prefix="gold-evil")
    assert scan_now(tad, cloud["id"])["status"] == "ok"
    silver = tad.post("pools", {"name": "silver", "filters": GOLD})
    named = tad.post("pools", {"name": "named", "center_ids": [cloud["id"]]})
    assert _members(api, silver["id"]) == {"gold-evil-00000"}
    # The global admin's rule offers both pools: the one of filters alone lets go at
    # once, the one that names its center keeps what the global admin chose to offer.
    _offer(api, silver["id"], "silver")
    _offer(api, named["id"], "named")
    assert _members(api, silver["id"]) == set()
    assert _members(api, named["id"]) == {"gold-evil-00000"}
    # And a later scan does not bring it back.
    assert scan_now(tad, cloud["id"])["status"] == "ok"
    assert _members(api, silver["id"]) == set()


def test_a_center_from_before_the_record_is_not_vouched_for(api: Api) -> None:
    """Migration 0009 leaves older centers' record empty: read as not vouched for, until
    a global administrator vouches for them."""
    api.post(
        "centers",
        {
            "name": "old",
            "kind": "static",
            "params": {"machines": [{"name": "gold-9", "address": "192.0.2.19"}]},
        },
    )
    gold = api.post("pools", {"name": "gold", "filters": GOLD})
    _offer(api, gold["id"], "gold")
    assert _members(api, gold["id"]) == {"gold-9"}
    with api.ctx.db.write() as session:
        session.execute(update(Center).values(vouched_by_global_admin=None))
        tenant = session.scalar(select(Center.tenant_id).where(Center.name == "old"))
        membership.refresh(session, str(tenant))
    assert _members(api, gold["id"]) == set()
    [old] = api.get("centers?name=old")["items"]
    assert old["vouched_by_global_admin"] is None
    api.patch(f"centers/{old['id']}", {"vouched_by_global_admin": True})
    assert _members(api, gold["id"]) == {"gold-9"}


def test_the_guard_in_the_domain() -> None:
    loose = PoolDefinition("p", filters=(), guarded=True)
    named = PoolDefinition("n", center_ids=frozenset({"c2"}), guarded=True)
    listed = PoolDefinition("l", desktop_ids=frozenset({"d2"}), guarded=True)
    open_pool = PoolDefinition("o")
    desktops: list[Any] = [
        DesktopFacts("d1", "c1", {}, vouched=True),
        DesktopFacts("d2", "c2", {}, vouched=False),
        DesktopFacts("d3", None, {}),
    ]
    assert members([loose, named, listed, open_pool], desktops) == {
        "p": {"d1", "d3"},
        "n": {"d2"},
        "l": {"d2"},
        "o": {"d1", "d2", "d3"},
    }

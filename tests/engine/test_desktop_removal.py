"""An administrator's delete of a desktop against cloudsim: what the broker built is
terminated by the engine (``deleting`` until the cloud confirms), what it found is
forgotten and left out of later scans, never destroyed."""

from __future__ import annotations

from typing import Any

from cloudsim.server import CloudSim
from deskbroker.bootstrap import add_local_user
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.services.inventory import scan_center
from tests.engine.conftest import openstack_center, provisioning_pool, run_until
from tests.helpers import ADMIN_PASSWORD, Api


def _server(sim: CloudSim, external_id: str) -> dict[str, Any] | None:
    return next((s for s in sim.servers("demo") if s["id"] == external_id), None)


def _deletes(sim: CloudSim, external_id: str) -> int:
    return sim.request_count(method="DELETE", path=f"/servers/{external_id}")


def test_deleting_a_built_desktop_terminates_its_instance_through_the_engine(
    api: Api, ctx: BrokerContext, sim: CloudSim, engine: Engine
) -> None:
    center = openstack_center(api, sim)
    pool = provisioning_pool(api, center["id"], n=2, m=2)

    def ready() -> bool:
        return bool(api.get(f"pools/{pool['id']}/status")["counts"]["available"] == 2)

    run_until(engine, ready, what="two built desktops")
    desktop = api.get(f"desktops?center_id={center['id']}")["items"][0]
    external = desktop["external_id"]
    assert desktop["deletable"] is True

    answer = api.client.delete(f"/api/v1/admin/desktops/{desktop['id']}", headers=api.headers)
    assert answer.status_code == 202, answer.text
    assert answer.json()["outcome"] == "deleting" and "center confirms" in answer.json()["message"]
    # The request called no cloud: the engine does, later.
    assert _deletes(sim, external) == 0
    shown = api.get(f"desktops/{desktop['id']}")
    assert (shown["power_state"], shown["availability"]) == ("deleting", "unavailable")
    # A scan that still sees the instance running does not bring the desktop back.
    assert _server(sim, external)["status"] == "ACTIVE"  # type: ignore[index]
    scan_center(ctx, center["id"], full=True)
    assert api.get(f"desktops/{desktop['id']}")["power_state"] == "deleting"
    # Deleting again is answered the same, and asks nothing more of anyone.
    again = api.client.delete(f"/api/v1/admin/desktops/{desktop['id']}", headers=api.headers)
    assert again.status_code == 202 and again.json()["outcome"] == "deleting"

    def gone() -> bool:
        found = api.client.get(f"/api/v1/admin/desktops/{desktop['id']}", headers=api.headers)
        return found.status_code == 404

    run_until(engine, gone, what="the desktop removed once the cloud confirmed")
    assert _deletes(sim, external) == 1, "terminated once, not once per engine pass"
    server = _server(sim, external)
    assert server is None or server["status"] == "DELETED"
    # Confirmed by the removal job (desktop.deleted) or by a scan that saw it gone first.
    kinds = [e["kind"] for e in api.get(f"events?desktop_id={desktop['id']}&limit=50")["items"]]
    assert "admin.delete" in kinds
    assert api.get(f"forgotten-desktops?center_id={center['id']}")["total"] == 0


def test_deleting_a_found_desktop_forgets_it_and_later_scans_leave_it_out(
    api: Api, ctx: BrokerContext, sim: CloudSim
) -> None:
    center = openstack_center(api, sim)
    sim.seed_servers(2, project="demo", name_prefix="legacy")
    scan_center(ctx, center["id"], full=True)
    found = api.get(f"desktops?center_id={center['id']}")["items"]
    assert len(found) == 2 and not any(d["deletable"] for d in found)
    victim, kept = found
    api.delete(f"desktops/{victim['id']}")  # 204: forgotten at once
    assert _deletes(sim, victim["external_id"]) == 0
    assert _server(sim, victim["external_id"])["status"] == "ACTIVE"  # type: ignore[index]

    scan_center(ctx, center["id"], full=True)
    left = api.get(f"desktops?center_id={center['id']}")["items"]
    assert [d["id"] for d in left] == [kept["id"]], "a forgotten machine came back"
    forgotten = api.get("forgotten-desktops")["items"]
    assert [(f["external_id"], f["name"], f["actor"]) for f in forgotten] == [
        (victim["external_id"], victim["name"], "admin")
    ]

    # Another tenant's administrator sees none of it and can undo none of it.
    add_local_user(ctx, "boss-b", ADMIN_PASSWORD, role="tenant_admin", tenant_name="b")
    ctx.cache.invalidate()
    signed = api.client.post(
        "/api/v1/auth/login",
        json={"username": "boss-b", "password": ADMIN_PASSWORD, "tenant": "b"},
    )
    assert signed.status_code == 200, signed.text
    other = Api(api.client, ctx, signed.json()["token"])
    assert other.get("forgotten-desktops")["total"] == 0
    theirs = other.delete(f"forgotten-desktops/{forgotten[0]['id']}", status=404)
    made_up = other.delete(f"forgotten-desktops/{'0' * 32}", status=404)
    assert theirs["title"] == made_up["title"]
    other.delete(f"desktops/{kept['id']}", status=404)
    assert api.get(f"desktops/{kept['id']}")["power_state"] != "deleting"

    # Un-forgotten, the next scan imports it again (a full one: the machine did not change).
    api.delete(f"forgotten-desktops/{forgotten[0]['id']}")
    assert api.get("forgotten-desktops")["total"] == 0
    scan_center(ctx, center["id"])
    names = {d["external_id"] for d in api.get(f"desktops?center_id={center['id']}")["items"]}
    assert names == {victim["external_id"], kept["external_id"]}


def test_an_assigned_or_unknown_desktop_is_refused_in_words(api: Api, ctx: BrokerContext) -> None:
    api.seed_pool(2, users=1)
    held = api.login("user0")["offers"][0]["desktop"]["id"]
    refused = api.delete(f"desktops/{held}", status=409)
    assert "assigned; release it first" in refused["detail"]
    api.delete(f"desktops/{'0' * 32}", status=404)
    assert api.get(f"desktops/{held}")["assigned_user_id"] is not None

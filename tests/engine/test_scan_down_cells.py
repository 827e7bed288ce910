"""Servers of a Nova cell that does not answer: from compute 2.69 a listing stands in for
them with their id and status UNKNOWN only, before 2.69 it leaves them out. Either way
the broker's desktops of those servers stay as they were."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from cloudsim.server import CloudSim
from deskbroker.centers.base import MachineInfo, ProvisionRequest
from deskbroker.centers.openstack import mapping
from deskbroker.domain.states import PowerState
from deskbroker.store.tables import Desktop
from tests.centers.test_openstack_clouds import _open as open_center
from tests.engine.conftest import held_unseen, next_scan_full, openstack_center
from tests.helpers import Api, run_queued_scan, wait_until

# What a scan writes of a desktop, as the admin API shows it.
_KEPT = ("name", "address", "hostname", "os", "attributes", "power_state", "availability")


def _desktops(api: Api, center_id: str) -> dict[str, dict[str, Any]]:
    items = api.get(f"desktops?center_id={center_id}&limit=100")["items"]
    return {d["external_id"]: {k: d[k] for k in _KEPT} for d in items}


def _members(api: Api, pool_id: str) -> set[str]:
    return {m["name"] for m in api.get(f"pools/{pool_id}/members")["items"]}


def test_desktops_in_a_down_cell_keep_what_the_broker_knew(api: Api, sim: CloudSim) -> None:
    servers = sim.seed_servers(6, name_prefix="vdi", metadata={"team": "blue", "os_type": "linux"})
    sim.set_server_state(servers[0], "SHUTOFF")
    center = openstack_center(api, sim)
    pool = api.post(
        "pools",
        {
            "name": "blue",
            "center_ids": [center["id"]],
            "filters": [{"attribute": "meta.team", "op": "equals", "value": "blue"}],
        },
    )
    assert run_queued_scan(api, center["id"])["status"] == "ok"
    before = _desktops(api, center["id"])
    assert before[servers[0]]["power_state"] == "stopped"
    assert all(d["address"] and d["attributes"]["meta.team"] == "blue" for d in before.values())
    everyone = _members(api, pool["id"])
    assert len(everyone) == 6

    sim.set_behaviour(down_cell=servers[:3])
    for _ in range(2):  # two looks that agree would remove what both missed
        next_scan_full(api, center["id"])
        scanned = run_queued_scan(api, center["id"])
        assert scanned["status"] == "ok", scanned["status_message"]
        assert scanned["status_message"] == (
            "full scan: 6 machines seen, 0 new, 0 changed, 0 gone; 3 known only by id "
            "(part of the cloud did not answer), kept as last seen"
        )
        assert _desktops(api, center["id"]) == before
        assert _members(api, pool["id"]) == everyone
        assert held_unseen(api, center["id"]) == []

    sim.set_behaviour(down_cell=[])
    back = run_queued_scan(api, center["id"])
    assert back["status_message"].endswith("0 new, 0 changed, 0 gone"), back["status_message"]
    assert _desktops(api, center["id"]) == before


def test_below_2_69_a_down_cell_is_held_on_one_look(api: Api, sim: CloudSim) -> None:
    """A cloud older than 2.69 says nothing of a down cell's servers: that looks like
    deleted ones, so they are kept until a second full look misses them too."""
    sim.set_behaviour(max_microversion="2.68")
    servers = sim.seed_servers(6, name_prefix="vdi")
    center = openstack_center(api, sim)
    assert run_queued_scan(api, center["id"])["status"] == "ok"
    before = _desktops(api, center["id"])
    sim.set_behaviour(down_cell=servers[:2])

    next_scan_full(api, center["id"])
    held = run_queued_scan(api, center["id"])
    assert held["status"] == "ok", held["status_message"]
    assert held["status_message"] == (
        "full scan: 4 machines seen, 0 new, 0 changed, 0 gone; "
        "2 unseen desktops kept until the next full scan agrees"
    )
    assert _desktops(api, center["id"]) == before
    assert held_unseen(api, center["id"]) == sorted(servers[:2])

    # Still silent at the second look: the broker cannot tell them from deleted ones.
    gone = run_queued_scan(api, center["id"])
    assert gone["status_message"].startswith("full scan: 4 machines seen")
    assert gone["status_message"].endswith(", 2 gone")
    assert set(_desktops(api, center["id"])) == set(servers[2:])


def test_a_partial_record_of_an_unknown_server_imports_nothing(api: Api, sim: CloudSim) -> None:
    servers = sim.seed_servers(3, name_prefix="vdi")
    sim.set_behaviour(down_cell=servers[:1])
    center = openstack_center(api, sim)
    first = run_queued_scan(api, center["id"])
    assert first["status"] == "ok", first["status_message"]
    assert first["status_message"].startswith("full scan: 3 machines seen, 2 new")
    assert "1 known only by id" in first["status_message"]
    assert set(_desktops(api, center["id"])) == set(servers[1:])
    with api.ctx.db.read() as session:
        names = set(session.scalars(select(Desktop.name)))
    assert "" not in names

    # Once the cell answers, the whole record is imported like any new server.
    sim.set_behaviour(down_cell=[])
    next_scan_full(api, center["id"])
    back = run_queued_scan(api, center["id"])
    assert back["status_message"].startswith("full scan: 3 machines seen, 1 new")
    assert _desktops(api, center["id"])[servers[0]]["name"] == "vdi-00000"


def test_the_driver_reads_a_stand_in_as_no_news(sim: CloudSim) -> None:
    """A lookup of a server in a down cell (a build waiting for it, a power action
    checking it) gets neither a running machine nor a failed one, and the fixed address
    a build hands over comes from the server's port."""
    driver = open_center(sim)
    request = ProvisionRequest(
        name="built",
        metadata={},
        tags=("t-1",),
        parameters={"image": "cirros-0.6.2-x86_64-disk", "flavor": "m1.tiny"},
    )
    server_id = driver.create(request)
    wait_until(
        lambda: (
            (m := driver.machine(server_id)) is not None and m.power_state is PowerState.RUNNING
        ),
        "the build to finish",
    )
    sim.set_behaviour(down_cell=[server_id])
    seen = driver.machine(server_id)
    assert seen is not None and seen.partial and not seen.gone
    assert seen.power_state is PowerState.UNKNOWN and seen.fault == ""
    assert seen.name == "" and seen.desktop_id == ""
    assert driver.attach_address(server_id, request) == sim.server_address(server_id)
    # Nor does a tag search take it for someone's build, or a sweep for a leak.
    assert driver.find_tagged("t-1") == []
    listed = {m.external_id: m for m in driver.inventory()}
    assert listed[server_id].partial


def test_an_unknown_status_with_a_name_is_a_whole_record() -> None:
    """Only a nameless UNKNOWN server is a stand-in: a whole record may say UNKNOWN too
    (Nova's status for a vm_state it cannot name)."""
    whole = mapping.machine({"id": "a", "name": "vdi-1", "status": "UNKNOWN", "metadata": {}})
    assert not whole.partial and whole.name == "vdi-1"
    stand_in = mapping.machine(
        {"id": "b", "status": "UNKNOWN", "tenant_id": "p", "created": "2024-01-01T00:00:00Z"}
    )
    assert stand_in == MachineInfo(
        external_id="b",
        name="",
        attributes={"status": "UNKNOWN"},
        driver_state={"status": "UNKNOWN"},
        partial=True,
    )


def test_connecting_to_a_stopped_desktop_in_a_down_cell_says_so_and_changes_nothing(
    api: Api, sim: CloudSim
) -> None:
    """Start on connect asks the center how the machine is: a stand-in record says
    nothing of it, so nothing is started or recorded, and the user is told why."""
    [server] = sim.seed_servers(1, name_prefix="vdi")
    sim.set_server_state(server, "SHUTOFF")
    center = openstack_center(api, sim)
    pool = api.post("pools", {"name": "cell", "center_ids": [center["id"]]})
    assert run_queued_scan(api, center["id"])["status"] == "ok"
    policy = api.post("policies", {"name": "cell", "entries": [{"pool_id": pool["id"]}]})
    api.post("assignment-rules", {"identity_source_id": api.source_id(), "policy_id": policy["id"]})
    api.post(
        "users", {"identity_source_id": api.source_id(), "username": "u1", "password": "password-1"}
    )
    login = api.login("u1", "password-1")
    desktop = login["offers"][0]["desktop"]
    assert api.get(f"desktops/{desktop['id']}")["power_state"] == "stopped"
    sim.set_behaviour(down_cell=[server])
    answer = api.client.post(
        f"/api/v1/client/desktops/{desktop['id']}/connect",
        json={"protocol": "vnc"},
        headers={"Authorization": f"Bearer {login['token']}"},
    )
    assert answer.status_code == 409, answer.text
    assert "the part of its cloud that holds it does not answer" in answer.json()["detail"]
    assert api.get(f"desktops/{desktop['id']}")["power_state"] == "stopped"
    [kept] = [s for s in sim.servers("demo") if s["id"] == server]
    assert kept["status"] == "SHUTOFF"

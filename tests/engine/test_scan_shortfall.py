"""A full scan that sees far fewer machines than the broker knows removes nothing until
a second full scan agrees: a cloud that pages, filters or half-answers is not believed
on one look."""

from __future__ import annotations

import time

from cloudsim.server import CloudSim
from deskbroker.centers.base import MachineInfo
from deskbroker.centers.registry import open_driver
from deskbroker.store.tables import Center
from tests.engine.conftest import openstack_center
from tests.helpers import Api, run_queued_scan


def _names(api: Api, center_id: str) -> set[str]:
    return {d["name"] for d in api.get(f"desktops?center_id={center_id}&limit=100")["items"]}


def _delete_in_the_cloud(sim: CloudSim, server_ids: list[str]) -> None:
    """Servers deleted behind the broker's back, through the cloud's own API."""
    cloud = open_driver(
        "openstack",
        {"auth_url": sim.auth_url, "project_name": "demo", "username": "demo"},
        {"password": "password"},
    )
    for server_id in server_ids:
        cloud.terminate(MachineInfo(external_id=server_id, name=server_id))
    sim.advance_clock(120)
    deadline = time.monotonic() + 20
    while {s["id"] for s in sim.servers("demo") if s["status"] != "DELETED"} & set(server_ids):
        assert time.monotonic() < deadline, "the cloud did not delete the servers"
        time.sleep(0.05)


def test_a_short_full_scan_keeps_the_desktops_until_a_second_one_agrees(
    api: Api, sim: CloudSim
) -> None:
    servers = sim.seed_servers(6, name_prefix="vdi")
    center = openstack_center(api, sim)
    with api.ctx.db.write() as session:
        row = session.get(Center, center["id"])
        assert row is not None
        row.full_scan_interval_s = 0  # every scan is the full reconcile
    assert run_queued_scan(api, center["id"])["status"] == "ok"
    everyone = _names(api, center["id"])
    assert len(everyone) == 6
    _delete_in_the_cloud(sim, servers[:4])

    held = api.post(f"centers/{center['id']}/scan", {}, status=202)
    assert held["center_id"] == center["id"]
    first = run_queued_scan(api, center["id"])
    assert first["status"] == "degraded"
    assert "saw 2 machines where the broker knows 6" in first["status_message"]
    assert "4 unseen desktops kept" in first["status_message"]
    assert _names(api, center["id"]) == everyone

    second = run_queued_scan(api, center["id"])
    assert second["status"] == "ok", second["status_message"]
    assert ", 4 gone" in second["status_message"]
    assert len(_names(api, center["id"])) == 2


def test_a_static_center_is_its_own_list(api: Api) -> None:
    """The operator's own list is believed at once: shortening it removes desktops."""
    machines = [{"name": f"m-{i}", "address": f"127.0.1.{i + 1}"} for i in range(4)]
    center = api.post(
        "centers", {"name": "lab", "kind": "static", "params": {"machines": machines}}
    )
    changed = api.patch(f"centers/{center['id']}", {"params": {"machines": machines[:1]}})
    assert changed["status"] == "ok" and _names(api, center["id"]) == {"m-0"}

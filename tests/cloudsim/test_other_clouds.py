"""cloudsim behaving like clouds that are not its defaults: lower page caps, filters
ignored, an older compute API, shelved servers, a cell that does not answer."""

from __future__ import annotations

from typing import Any

import pytest

from cloudsim.server import CloudSim
from tests.cloudsim.conftest import http, token_for


def _get(sim: CloudSim, path: str, token: str, version: str = "2.79") -> tuple[int, Any]:
    status, _, body = http(
        "GET",
        sim.url + path,
        headers={"X-Auth-Token": token, "OpenStack-API-Version": f"compute {version}"},
    )
    return status, body


def _follow(sim: CloudSim, path: str, key: str, token: str) -> list[list[dict[str, Any]]]:
    """Every page, by the next links the service gives."""
    pages: list[list[dict[str, Any]]] = []
    url: str | None = sim.url + path
    while url:
        status, _, body = http(
            "GET", url, headers={"X-Auth-Token": token, "OpenStack-API-Version": "compute 2.79"}
        )
        assert status == 200, body
        pages.append(body[key])
        links = body.get(f"{key}_links") or []
        nxt = body.get("next")  # Glance's own spelling
        url = links[0]["href"] if links else (sim.url + "/image" + nxt if nxt else None)
    return pages


def test_nova_caps_pages_at_its_max_limit_and_links_the_next(sim: CloudSim) -> None:
    ids = sim.seed_servers(7)
    sim.set_behaviour(max_limit={"compute": 3})
    token = token_for(sim)
    # Asked for 1000, given 3 and a next link: a client stopping at a short page loses 4.
    pages = _follow(sim, "/compute/v2.1/servers/detail?limit=1000", "servers", token)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert sorted(s["id"] for p in pages for s in p) == sorted(ids)
    flavors = _follow(sim, "/compute/v2.1/flavors", "flavors", token)
    assert [len(p) for p in flavors] == [3, 3, 1]


def test_every_service_pages_at_two(sim: CloudSim) -> None:
    sim.set_behaviour(max_limit=2)
    sim.seed_images(3)
    token = token_for(sim)
    images = _follow(sim, "/image/v2/images?limit=500", "images", token)
    assert all(len(p) <= 2 for p in images) and sum(map(len, images)) == 7
    networks = _follow(sim, "/network/v2.0/networks", "networks", token)
    assert [len(p) for p in networks] == [2, 0]  # a full page always links on
    assert sim.behaviour()["max_limits"] == {
        "compute": 2,
        "image": 2,
        "volume": 2,
        "network": 2,
    }
    sim.reset()
    assert sim.behaviour()["max_limits"]["compute"] == 1000
    assert sim.behaviour()["max_limits"]["network"] is None


def test_a_cloud_that_ignores_filters_answers_with_everything(sim: CloudSim) -> None:
    sim.seed_servers(2, tags=["deskbroker"])
    sim.seed_servers(3, name_prefix="foreign")
    token = token_for(sim)
    status, body = _get(sim, "/compute/v2.1/servers/detail?tags=deskbroker", token)
    assert status == 200 and len(body["servers"]) == 2
    sim.set_behaviour(ignore_filters=True)
    status, body = _get(sim, "/compute/v2.1/servers/detail?tags=deskbroker", token)
    assert len(body["servers"]) == 5
    status, _, ports = http(
        "GET", sim.url + "/network/v2.0/ports?device_id=nothing", headers={"X-Auth-Token": token}
    )
    assert len(ports["ports"]) == 5


def test_an_older_compute_api_refuses_newer_microversions(sim: CloudSim) -> None:
    sim.set_behaviour(max_microversion="2.60")
    token = token_for(sim)
    status, body = _get(sim, "/compute/v2.1/servers/detail", token, "2.79")
    assert status == 406
    assert "maximum is 2.60" in body["notAcceptable"]["message"]
    status, body = _get(sim, "/compute/v2.1/", token, "2.1")
    assert body["version"]["version"] == "2.60" and body["version"]["min_version"] == "2.1"
    status, body = _get(sim, "/compute/v2.1/servers/detail", token, "2.60")
    assert status == 200


def test_control_api_steers_the_behaviour(sim: CloudSim) -> None:
    status, _, body = http("PUT", sim.url + "/_sim/behaviour", {"max_microversion": "2.1"})
    assert status == 200 and body["max_microversion"] == "2.1"
    status, _, body = http("PUT", sim.url + "/_sim/behaviour", {"max_limit": {"glance": 3}})
    assert status == 400 and "unknown service 'glance'" in body["error"]
    status, _, body = http("PUT", sim.url + "/_sim/behaviour", {"max_microversion": "two"})
    assert status == 400


def test_a_down_cells_servers_are_stood_in_for_from_2_69_and_left_out_before(
    sim: CloudSim,
) -> None:
    down, *up = sim.seed_servers(3)
    [elsewhere] = sim.seed_servers(1, project="other")
    assert sim.set_behaviour(down_cell=[down, elsewhere])["down_cell"] == sorted([down, elsewhere])
    token = token_for(sim)

    _, body = _get(sim, "/compute/v2.1/servers/detail", token, "2.69")
    by_id = {s["id"]: s for s in body["servers"]}
    assert set(by_id) == {down, *up}  # another project's server stays hidden
    stand_in = by_id[down]
    assert set(stand_in) == {"id", "status", "tenant_id", "created", "links"}
    assert stand_in["status"] == "UNKNOWN" and stand_in["created"]
    assert stand_in["tenant_id"] == by_id[up[0]]["tenant_id"] and len(stand_in["links"]) == 2
    _, body = _get(sim, "/compute/v2.1/servers", token, "2.79")
    assert {"id": down, "status": "UNKNOWN", "links": stand_in["links"]} in body["servers"]
    # Filtered, sorted, paged or older: the down cell's servers are left out.
    for query, version in (
        ("?limit=1000", "2.79"),
        ("?name=seed", "2.79"),
        ("?sort_key=name", "2.79"),
        ("?changes-since=2000-01-01T00:00:00Z", "2.79"),
        ("", "2.68"),
    ):
        status, body = _get(sim, "/compute/v2.1/servers/detail" + query, token, version)
        assert status == 200 and {s["id"] for s in body["servers"]} == set(up), query

    status, body = _get(sim, f"/compute/v2.1/servers/{down}", token, "2.79")
    assert status == 200
    shown = body["server"]
    assert set(shown) == {
        "id",
        "status",
        "tenant_id",
        "created",
        "user_id",
        "image",
        "flavor",
        "OS-EXT-AZ:availability_zone",
        "OS-EXT-STS:power_state",
        "server_groups",
    }
    assert shown["status"] == "UNKNOWN" and shown["OS-EXT-STS:power_state"] == 0
    status, body = _get(sim, f"/compute/v2.1/servers/{down}", token, "2.68")
    assert status == 500 and "not responding" in str(body)
    status, _, _ = http(
        "DELETE",
        f"{sim.url}/compute/v2.1/servers/{down}",
        headers={"X-Auth-Token": token, "OpenStack-API-Version": "compute 2.79"},
    )
    assert status == 500

    # The cell answers again: whole records, everywhere.
    sim.set_behaviour(down_cell=[])
    _, body = _get(sim, f"/compute/v2.1/servers/{down}", token, "2.68")
    assert body["server"]["name"] == "seed-00000"


def test_a_down_cell_is_steered_by_server_id_and_reset(sim: CloudSim) -> None:
    [server_id] = sim.seed_servers(1)
    status, _, body = http("PUT", sim.url + "/_sim/behaviour", {"down_cell": [server_id]})
    assert status == 200 and body["down_cell"] == [server_id]
    status, _, body = http("PUT", sim.url + "/_sim/behaviour", {"down_cell": ["nothing"]})
    assert status == 400 and "no server nothing" in body["error"]
    status, _, body = http("PUT", sim.url + "/_sim/behaviour", {"down_cell": server_id})
    assert status == 400
    sim.reset()
    assert sim.behaviour()["down_cell"] == []


@pytest.mark.parametrize("offloaded", [False, True])
def test_shelved_servers_come_back_with_unshelve_not_start(sim: CloudSim, offloaded: bool) -> None:
    [server_id] = sim.seed_servers(1)
    token = token_for(sim)
    headers = {"X-Auth-Token": token, "OpenStack-API-Version": "compute 2.79"}
    action = f"{sim.url}/compute/v2.1/servers/{server_id}/action"
    status, _, _ = http("POST", action, {"shelve": None}, headers)
    assert status == 202
    sim.advance_clock(5)
    _, body = _get(sim, f"/compute/v2.1/servers/{server_id}", token)
    assert body["server"]["status"] == "SHELVED_OFFLOADED"
    sim.set_server_state(server_id, "SHELVED_OFFLOADED" if offloaded else "SHELVED")
    _, body = _get(sim, f"/compute/v2.1/servers/{server_id}", token)
    assert body["server"]["status"] == ("SHELVED_OFFLOADED" if offloaded else "SHELVED")
    status, _, body = http("POST", action, {"os-start": None}, headers)
    assert status == 409
    status, _, _ = http("POST", action, {"unshelve": None}, headers)
    assert status == 202
    sim.advance_clock(5)
    _, body = _get(sim, f"/compute/v2.1/servers/{server_id}", token)
    assert body["server"]["status"] == "ACTIVE"

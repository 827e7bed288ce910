"""Many clients at once: no lost updates, no server errors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from cloudsim.server import CloudSim
from tests.cloudsim.conftest import http, token_for


def test_parallel_creates_actions_and_listings(sim: CloudSim) -> None:
    sim.set_quota("demo", instances=-1, cores=-1, ram=-1)
    token = token_for(sim)
    headers = {"X-Auth-Token": token, "OpenStack-API-Version": "compute 2.96"}
    _, _, body = http(
        "GET", sim.url + "/image/v2/images?name=cirros-0.6.2-x86_64-disk", headers=headers
    )
    image = body["images"][0]["id"]

    def worker(index: int) -> list[int]:
        codes = []
        for round_ in range(8):
            status, _, created = http(
                "POST",
                sim.url + "/compute/v2.1/servers",
                {
                    "server": {
                        "name": f"w{index}-{round_}",
                        "imageRef": image,
                        "flavorRef": "1",
                        "networks": "auto",
                        "tags": [f"worker-{index}"],
                    }
                },
                headers,
            )
            codes.append(status)
            server_id = created["server"]["id"]
            codes.append(
                http("GET", f"{sim.url}/compute/v2.1/servers/detail?limit=5", headers=headers)[0]
            )
            codes.append(
                http("DELETE", f"{sim.url}/compute/v2.1/servers/{server_id}", headers=headers)[0]
                if round_ % 2
                else 204
            )
        return codes

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [code for codes in pool.map(worker, range(8)) for code in codes]
    assert set(results) <= {200, 202, 204}
    sim.advance_clock(10)
    live = [s for s in sim.servers("demo") if s["status"] != "DELETED"]
    assert len(live) == 32
    assert all(s["status"] == "ACTIVE" for s in live)
    addresses = [s["address"] for s in live]
    assert len(set(addresses)) == len(addresses)
    assert sim.request_count(status=500) == 0

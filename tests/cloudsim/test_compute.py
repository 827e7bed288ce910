"""Nova: server lifecycle through openstacksdk, state phases, 409 rules, quota, microversions."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import openstack
import pytest

from cloudsim.server import CloudSim
from tests.cloudsim.conftest import POLL, http, token_for


def _states(
    sim: CloudSim, conn: Any, server_id: str, until: str, step: float = 0.05
) -> list[tuple[str, str | None]]:
    """Walk the simulated clock forward ``step`` seconds at a time, reading GET
    /servers/{id} at each stop, and collect the distinct (status, task_state) pairs until
    ``until`` settles. The caller stops the clock first (``_stopped_clock``): every phase
    is seen however slowly this machine answers, where polling a running clock can miss
    one on a loaded machine."""
    seen: list[tuple[str, str | None]] = []
    for _ in range(int(30 / step)):  # thirty simulated seconds: far past any operation
        body = conn.compute.get(f"/servers/{server_id}", microversion="2.96").json()["server"]
        pair = (body["status"], body["OS-EXT-STS:task_state"])
        if not seen or seen[-1] != pair:
            seen.append(pair)
        if body["status"] == until and pair[1] is None:
            return seen
        sim.advance_clock(step)
    raise AssertionError(f"never reached {until}: {seen}")


def _stopped_clock(sim: CloudSim) -> None:
    """Slow the simulated clock until it as good as stands (a simulated millisecond per
    ten real seconds): only ``advance_clock`` moves it."""
    sim.set_clock_speed(1e-4)


def test_full_lifecycle_through_the_proxy_layer(conn: Any, boot: Callable[..., Any]) -> None:
    server = boot("desk-1")
    assert server.status == "ACTIVE"
    assert server.vm_state == "active" and server.power_state == 1
    conn.compute.stop_server(server)
    server = conn.compute.wait_for_server(server, status="SHUTOFF", interval=POLL)
    assert server.power_state == 4
    conn.compute.start_server(server)
    server = conn.compute.wait_for_server(server, status="ACTIVE", interval=POLL)
    conn.compute.suspend_server(server)
    server = conn.compute.wait_for_server(server, status="SUSPENDED", interval=POLL)
    conn.compute.resume_server(server)
    server = conn.compute.wait_for_server(server, status="ACTIVE", interval=POLL)
    conn.compute.reboot_server(server, "SOFT")
    server = conn.compute.wait_for_server(server, status="ACTIVE", interval=POLL)
    conn.compute.reboot_server(server, "HARD")
    server = conn.compute.wait_for_server(server, status="ACTIVE", interval=POLL)
    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, interval=POLL)
    with pytest.raises(openstack.exceptions.NotFoundException):
        conn.compute.get_server(server.id)


def test_create_answers_202_without_status(sim: CloudSim) -> None:
    token = token_for(sim)
    status, headers, body = http(
        "POST",
        sim.url + "/compute/v2.1/servers",
        {"server": {"name": "raw", "imageRef": _image(sim), "flavorRef": "1", "networks": "auto"}},
        {"X-Auth-Token": token, "OpenStack-API-Version": "compute 2.96"},
    )
    assert status == 202
    assert "status" not in body["server"]
    assert body["server"]["adminPass"]
    assert headers["Location"].endswith(body["server"]["id"])
    assert headers["OpenStack-API-Version"] == "compute 2.96"


def _image(sim: CloudSim) -> str:
    status, _, body = http(
        "GET",
        sim.url + "/image/v2/images?name=cirros-0.6.2-x86_64-disk",
        headers={"X-Auth-Token": token_for(sim)},
    )
    assert status == 200
    return str(body["images"][0]["id"])


def test_build_phases_and_power_task_states(
    sim: CloudSim, conn: Any, boot: Callable[..., Any]
) -> None:
    _stopped_clock(sim)
    server = boot("phases", wait=False)
    seen = _states(sim, conn, server.id, "ACTIVE")
    assert seen[0] == ("BUILD", "scheduling")
    assert ("BUILD", "networking") in seen and ("BUILD", "spawning") in seen
    assert seen[-1] == ("ACTIVE", None)
    conn.compute.stop_server(server)
    seen = _states(sim, conn, server.id, "SHUTOFF")
    assert seen[0] == ("ACTIVE", "powering-off")
    conn.compute.start_server(server)
    assert _states(sim, conn, server.id, "ACTIVE")[0] == ("SHUTOFF", "powering-on")
    conn.compute.reboot_server(server, "SOFT")
    assert _states(sim, conn, server.id, "ACTIVE")[0] == ("REBOOT", "rebooting")
    conn.compute.reboot_server(server, "HARD")
    assert _states(sim, conn, server.id, "ACTIVE")[0] == ("HARD_REBOOT", "rebooting_hard")


def test_delete_is_204_and_lingers_in_deleting(
    sim: CloudSim, conn: Any, boot: Callable[..., Any]
) -> None:
    server = boot("doomed")
    sim.set_clock_speed(0.5)
    token = token_for(sim)
    status, _, _ = http(
        "DELETE", f"{sim.url}/compute/v2.1/servers/{server.id}", headers={"X-Auth-Token": token}
    )
    assert status == 204
    body = conn.compute.get(f"/servers/{server.id}").json()["server"]
    assert body["status"] == "ACTIVE"
    assert body["OS-EXT-STS:task_state"] == "deleting"
    sim.advance_clock(1)
    assert conn.compute.get(f"/servers/{server.id}").status_code == 404


@pytest.mark.parametrize(
    ("setup", "action", "message"),
    [
        ("ACTIVE", "os-start", "while it is in vm_state active"),
        ("SHUTOFF", "os-stop", "while it is in vm_state stopped"),
        ("SHUTOFF", "suspend", "while it is in vm_state stopped"),
        ("ACTIVE", "resume", "while it is in vm_state active"),
        ("SUSPENDED", "os-stop", "while it is in vm_state suspended"),
        ("SHUTOFF", "reboot-soft", "while it is in vm_state stopped"),
        ("ERROR", "suspend", "while it is in vm_state error"),
        ("POWERING_OFF", "os-start", "while it is in vm_state active"),
        ("POWERING_OFF", "os-stop", "while it is in task_state powering-off"),
        ("POWERING_OFF", "reboot-soft", "while it is in task_state powering-off"),
        ("BUILD", "os-stop", "while it is in vm_state building"),
    ],
)
def test_conflicts_are_409(
    sim: CloudSim, conn: Any, boot: Callable[..., Any], setup: str, action: str, message: str
) -> None:
    server = boot("conflict", wait=setup != "BUILD")
    if setup in ("SHUTOFF", "SUSPENDED", "ERROR"):
        sim.set_server_state(server.id, setup)
    if setup == "POWERING_OFF":
        sim.set_clock_speed(0.5)
        conn.compute.stop_server(server)
    if setup == "BUILD":
        sim.set_clock_speed(0.5)
    body: dict[str, Any] = {action: None}
    if action == "reboot-soft":
        body = {"reboot": {"type": "SOFT"}}
    resp = conn.compute.post(f"/servers/{server.id}/action", json=body)
    assert resp.status_code == 409
    error = resp.json()["conflictingRequest"]
    assert error["code"] == 409
    assert message in error["message"]


@pytest.mark.parametrize("setup", ["SHUTOFF", "SUSPENDED", "ERROR"])
def test_hard_reboot_recovers_from_non_active_states(
    sim: CloudSim, conn: Any, boot: Callable[..., Any], setup: str
) -> None:
    server = boot("hard")
    sim.set_server_state(server.id, setup, "broken disk")
    conn.compute.reboot_server(server, "HARD")
    server = conn.compute.wait_for_server(server, status="ACTIVE", interval=POLL)
    assert server.status == "ACTIVE"


def test_sdk_actions_raise_conflict(conn: Any, boot: Callable[..., Any]) -> None:
    server = boot("sdk-conflict")
    with pytest.raises(openstack.exceptions.ConflictException):
        conn.compute.start_server(server)


def test_quota_exceeded_is_403_with_nova_message(
    sim: CloudSim, conn: Any, boot: Callable[..., Any]
) -> None:
    sim.set_quota("demo", instances=10)
    sim.seed_servers(10, project="demo")
    with pytest.raises(openstack.exceptions.ForbiddenException) as info:
        boot("one-too-many", wait=False)
    assert info.value.status_code == 403
    assert "Quota exceeded for instances: Requested 1, but already used 10 of 10 instances" in str(
        info.value
    )
    limits = conn.compute.get("/limits").json()["limits"]["absolute"]
    assert limits["totalInstancesUsed"] == 10 and limits["maxTotalInstances"] == 10


def test_cores_quota_and_release_after_delete(
    sim: CloudSim, conn: Any, boot: Callable[..., Any]
) -> None:
    sim.set_quota("demo", instances=5, cores=1)
    server = boot("only-one")
    with pytest.raises(openstack.exceptions.ForbiddenException) as info:
        boot("second", wait=False)
    assert "Quota exceeded for cores: Requested 1, but already used 1 of 1 cores" in str(info.value)
    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, interval=POLL)
    boot("after-delete")


def test_networks_required_from_237(sim: CloudSim) -> None:
    token = token_for(sim)
    body = {"server": {"name": "n", "imageRef": _image(sim), "flavorRef": "1"}}
    status, _, err = http(
        "POST",
        sim.url + "/compute/v2.1/servers",
        body,
        {"X-Auth-Token": token, "OpenStack-API-Version": "compute 2.37"},
    )
    assert status == 400
    assert "'networks' is a required property" in err["badRequest"]["message"]
    status, _, _ = http(
        "POST",
        sim.url + "/compute/v2.1/servers",
        body,
        {"X-Auth-Token": token, "X-OpenStack-Nova-API-Version": "2.36"},
    )
    assert status == 202
    for value in ("auto", "none"):
        body["server"]["networks"] = value
        status, _, _ = http(
            "POST",
            sim.url + "/compute/v2.1/servers",
            body,
            {"X-Auth-Token": token, "OpenStack-API-Version": "compute 2.90"},
        )
        assert status == 202


def test_microversion_negotiation(sim: CloudSim) -> None:
    token = token_for(sim)
    url = sim.url + "/compute/v2.1/servers"
    status, headers, _ = http("GET", url, headers={"X-Auth-Token": token})
    assert status == 200 and headers["OpenStack-API-Version"] == "compute 2.1"
    status, headers, _ = http(
        "GET", url, headers={"X-Auth-Token": token, "OpenStack-API-Version": "compute latest"}
    )
    assert headers["OpenStack-API-Version"] == "compute 2.100"
    assert headers["X-OpenStack-Nova-API-Version"] == "2.100"
    for bad in ("compute 2.101", "compute 3.0"):
        status, _, _ = http(
            "GET", url, headers={"X-Auth-Token": token, "OpenStack-API-Version": bad}
        )
        assert status == 406
    status, _, _ = http(
        "GET", url, headers={"X-Auth-Token": token, "X-OpenStack-Nova-API-Version": "2.x"}
    )
    assert status == 400


def test_view_changes_with_microversion(sim: CloudSim, conn: Any, boot: Callable[..., Any]) -> None:
    server = boot("views", tags=["a"])
    old = conn.compute.get(f"/servers/{server.id}", microversion="2.1").json()["server"]
    new = conn.compute.get(f"/servers/{server.id}", microversion="2.96").json()["server"]
    assert "tags" not in old and "locked" not in old and "id" in old["flavor"]
    assert new["tags"] == ["a"] and new["locked"] is False
    assert new["flavor"]["original_name"] == "m1.tiny"
    assert new["pinned_availability_zone"] is None


@pytest.mark.filterwarnings("ignore:You have a configured API_VERSION")
def test_compute_api_version_latest_connection(sim: CloudSim) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        latest = openstack.connection.Connection(
            compute_api_version="2.latest", **sim.credentials("demo")
        )
    sim.seed_servers(2, project="demo", tags=["x"])
    servers = list(latest.compute.servers(details=True))
    assert len(servers) == 2 and servers[0].tags == ["x"]


def test_tags_metadata_and_update(conn: Any, boot: Callable[..., Any]) -> None:
    server = boot("tagged", tags=["deskbroker", "pool-a"], metadata={"owner": "alice"})
    assert set(server.tags) == {"deskbroker", "pool-a"}
    conn.compute.put(f"/servers/{server.id}/tags", json={"tags": ["x", "y"]}, microversion="2.26")
    assert conn.compute.get(f"/servers/{server.id}/tags", microversion="2.26").json() == {
        "tags": ["x", "y"]
    }
    assert conn.compute.put(f"/servers/{server.id}/tags/z", microversion="2.26").status_code == 201
    assert (
        conn.compute.get(f"/servers/{server.id}/tags/nope", microversion="2.26").status_code == 404
    )
    conn.compute.set_server_metadata(server, seat="12")
    meta = conn.compute.get_server_metadata(server).metadata
    assert meta == {"owner": "alice", "seat": "12"}
    conn.compute.delete_server_metadata(server, ["owner"])
    assert conn.compute.get_server_metadata(server).metadata == {"seat": "12"}
    renamed = conn.compute.update_server(server, name="renamed")
    assert renamed.name == "renamed"


def test_tags_need_252_in_create(sim: CloudSim) -> None:
    status, _, err = http(
        "POST",
        sim.url + "/compute/v2.1/servers",
        {
            "server": {
                "name": "t",
                "imageRef": _image(sim),
                "flavorRef": "1",
                "networks": "auto",
                "tags": ["a"],
            }
        },
        {"X-Auth-Token": token_for(sim), "OpenStack-API-Version": "compute 2.51"},
    )
    assert status == 400 and "tags" in err["badRequest"]["message"]


def test_flavors_availability_zones_keypairs(conn: Any) -> None:
    flavors = {f.name: f for f in conn.compute.flavors()}
    assert flavors["m1.small"].ram == 2048 and flavors["m1.small"].vcpus == 1
    assert conn.compute.get_flavor("3").name == "m1.medium"
    zones = [z.name for z in conn.compute.availability_zones()]
    assert zones == ["nova"]
    pair = conn.compute.create_keypair(name="k1", public_key="ssh-ed25519 AAAA test")
    assert pair.fingerprint
    assert [k.name for k in conn.compute.keypairs()] == ["k1"]
    conn.compute.delete_keypair("k1")


def test_bad_create_requests(sim: CloudSim, conn: Any) -> None:
    network = conn.network.find_network("private")
    for attrs, text in [
        ({"image_id": "nope", "flavor_id": "1"}, "Image nope could not be found"),
        ({"image_id": _image(sim), "flavor_id": "99"}, "Flavor 99 could not be found"),
    ]:
        with pytest.raises(openstack.exceptions.BadRequestException) as info:
            conn.compute.create_server(name="bad", networks=[{"uuid": network.id}], **attrs)
        assert text in str(info.value)
    with pytest.raises(openstack.exceptions.BadRequestException):
        conn.compute.create_server(
            name="bad", image_id=_image(sim), flavor_id="1", networks=[{"uuid": "missing"}]
        )
    public = conn.network.find_network("public")
    with pytest.raises(openstack.exceptions.ForbiddenException):
        conn.compute.create_server(
            name="bad", image_id=_image(sim), flavor_id="1", networks=[{"uuid": public.id}]
        )


def test_addresses_console_and_interfaces(
    sim: CloudSim, conn: Any, boot: Callable[..., Any]
) -> None:
    server = boot("addr")
    fixed = server.addresses["private"][0]["addr"]
    assert fixed.startswith("127.100.")
    assert sim.server_address(server.id) == fixed
    ports = list(conn.network.ports(device_id=server.id))
    assert [p.fixed_ips[0]["ip_address"] for p in ports] == [fixed]
    output = conn.compute.get_server_console_output(server)["output"]
    assert server.id in output
    interfaces = list(conn.compute.server_interfaces(server))
    assert interfaces[0].port_id == ports[0].id

"""Failure injection, latency, clock control, the request log and the HTTP control API."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import keystoneauth1.exceptions
import openstack
import pytest

from cloudsim.server import CloudSim
from tests.cloudsim.conftest import POLL, http, make_connection


def test_one_shot_500(sim: CloudSim, conn: Any) -> None:
    sim.inject_fault(500, method="GET", path=r"/servers/detail$")
    with pytest.raises(openstack.exceptions.HttpException) as info:
        list(conn.compute.servers())
    assert info.value.status_code == 500
    assert list(conn.compute.servers()) == []
    assert sim.faults() == []


def test_503_with_retry_after_and_sdk_retries(sim: CloudSim, conn: Any) -> None:
    sim.inject_fault(503, path=r"/flavors", retry_after=0)
    resp = conn.compute.get("/flavors")
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == "0"
    retrying = make_connection(sim, status_code_retries=3)
    sim.inject_fault(503, path=r"/flavors/detail$", times=2, retry_after=0)
    mark = sim.last_request_seq
    assert len(list(retrying.compute.flavors())) == 7
    statuses = [e["status"] for e in sim.requests(since=mark) if "flavors" in e["path"]]
    assert statuses == [503, 503, 200]


def test_injected_401_makes_keystoneauth_reauthenticate(sim: CloudSim, conn: Any) -> None:
    list(conn.compute.servers())
    sim.inject_fault(401, path=r"/servers/detail$")
    mark = sim.last_request_seq
    assert list(conn.compute.servers()) == []
    log = [(e["method"], e["path"], e["status"]) for e in sim.requests(since=mark)]
    assert ("GET", "/compute/v2.1/servers/detail", 401) in log
    assert ("POST", "/identity/v3/auth/tokens", 201) in log
    assert log[-1] == ("GET", "/compute/v2.1/servers/detail", 200)


def test_injected_409(sim: CloudSim, conn: Any, boot: Callable[..., Any]) -> None:
    server = boot("c")
    sim.inject_fault(409, method="POST", path=r"/action$", message="Busy, try later")
    with pytest.raises(openstack.exceptions.ConflictException) as info:
        conn.compute.stop_server(server)
    assert "Busy, try later" in str(info.value)
    conn.compute.stop_server(server)


def test_connection_reset(sim: CloudSim, conn: Any) -> None:
    sim.inject_fault("reset", path=r"/servers/detail$")
    with pytest.raises(
        (openstack.exceptions.SDKException, keystoneauth1.exceptions.ConnectionError)
    ):
        list(conn.compute.servers())
    assert list(conn.compute.servers()) == []
    entry = sim.requests(path=r"/servers/detail$")[0]
    assert entry["fault"] == "reset" and entry["status"] == 0


def test_rate_and_skip(sim: CloudSim, conn: Any) -> None:
    sim.inject_fault(500, path=r"/flavors/1$", times=None, rate=0.5)
    codes = [conn.compute.get("/flavors/1").status_code for _ in range(60)]
    failures = codes.count(500)
    assert 10 < failures < 50 and set(codes) == {200, 500}
    sim.clear_faults()
    sim.inject_fault(500, path=r"/flavors/2$", skip=2, times=1)
    codes = [conn.compute.get("/flavors/2").status_code for _ in range(4)]
    assert codes == [200, 200, 500, 200]


def test_build_stuck(sim: CloudSim, conn: Any, boot: Callable[..., Any]) -> None:
    sim.inject_fault("build_stuck", name="^stuck")
    stuck = boot("stuck-1", wait=False)
    fine = boot("fine")
    sim.advance_clock(3600)
    body = conn.compute.get(f"/servers/{stuck.id}").json()["server"]
    assert (body["status"], body["OS-EXT-STS:task_state"]) == ("BUILD", "spawning")
    assert conn.compute.get_server(fine.id).status == "ACTIVE"
    conn.compute.delete_server(stuck)
    conn.compute.wait_for_delete(stuck, interval=POLL)


def test_build_error(sim: CloudSim, conn: Any, boot: Callable[..., Any]) -> None:
    sim.inject_fault("build_error")
    server = boot("doomed", wait=False)
    with pytest.raises(openstack.exceptions.ResourceFailure):
        conn.compute.wait_for_server(server, interval=POLL)
    server = conn.compute.get_server(server.id)
    assert server.status == "ERROR"
    assert "No valid host was found" in server.fault["message"]
    assert server.fault["code"] == 500
    assert list(conn.network.ports(device_id=server.id)) == []


def test_error_after_build(sim: CloudSim, conn: Any, boot: Callable[..., Any]) -> None:
    # A long stop, so that a busy machine still sees it under way (the clock runs fast).
    sim.set_timings(error_after_build=100, stop=100)
    sim.inject_fault("error_after_build")
    server = boot("flaky")
    assert server.status == "ACTIVE"
    sim.advance_clock(101)
    server = conn.compute.get_server(server.id)
    assert server.status == "ERROR" and server.fault["message"]
    conn.compute.stop_server(server)  # Nova allows os-stop from ERROR
    # The status stays ERROR while powering off (so wait_for_server would give up).
    assert conn.compute.get_server(server.id).task_state == "powering-off"
    sim.advance_clock(101)
    assert conn.compute.get_server(server.id).status == "SHUTOFF"


def test_latency(sim: CloudSim, conn: Any) -> None:
    rule = sim.add_latency(0.3, method="GET", path=r"/flavors/1$")
    started = time.perf_counter()
    conn.compute.get("/flavors/1")
    assert time.perf_counter() - started >= 0.3
    sim.remove_rule(rule)
    started = time.perf_counter()
    conn.compute.get("/flavors/1")
    assert time.perf_counter() - started < 0.3


def test_clock_speed_controls_build_time(
    sim: CloudSim, conn: Any, boot: Callable[..., Any]
) -> None:
    sim.set_clock_speed(1)
    sim.set_timings(build=0.4)
    started = time.perf_counter()
    boot("timed")
    elapsed = time.perf_counter() - started
    assert 0.35 < elapsed < 3
    sim.set_clock_speed(0.01)
    server = boot("frozen", wait=False)
    time.sleep(0.1)
    assert conn.compute.get_server(server.id).status == "BUILD"
    sim.advance_clock(1)
    assert conn.compute.get_server(server.id).status == "ACTIVE"


def test_request_log_and_counts(sim: CloudSim, conn: Any) -> None:
    sim.clear_requests()
    list(conn.compute.flavors())
    conn.compute.get("/flavors/42")
    counts = sim.counts()
    assert counts["by_route"]["GET /compute/v2.1/flavors/detail"] == 1
    assert counts["by_route"]["GET /compute/v2.1/flavors/{flavor_id}"] == 1
    entry = sim.requests(path=r"/flavors/42$")[0]
    assert entry["method"] == "GET" and entry["status"] == 200
    assert entry["duration_ms"] >= 0 and entry["time"] > 0
    assert 0 < entry["cpu_ms"] <= entry["duration_ms"] + 1
    assert sim.request_count(method="GET", path="flavors") == 2


def test_reset_clears_everything_but_identity(sim: CloudSim, conn: Any) -> None:
    sim.seed_servers(5)
    sim.inject_fault(500, path="never-matches")
    sim.reset()
    assert list(conn.compute.servers()) == []
    assert sim.faults() == [] and sim.request_count() == 1


def test_control_api_over_http(sim: CloudSim, conn: Any) -> None:
    base = sim.url + "/_sim"
    status, _, info = http("GET", base)
    assert status == 200 and info["metadata_url"] == sim.metadata_url
    status, _, seeded = http(
        "POST", base + "/seed/servers", {"count": 30, "project": "demo", "tags": ["deskbroker"]}
    )
    assert status == 201 and len(seeded["ids"]) == 30
    assert len(list(conn.compute.servers())) == 30
    status, _, _rule = http(
        "POST", base + "/faults", {"kind": "503", "path": "/servers/detail", "retry_after": 1}
    )
    assert status == 201
    assert conn.compute.get("/servers/detail").status_code == 503
    status, _, _ = http("POST", base + "/latency", {"seconds": 0.01, "path": "/flavors"})
    assert status == 201
    status, _, clock = http("PUT", base + "/clock", {"speed": 100})
    assert clock["speed"] == 100
    server_id = seeded["ids"][0]
    status, _, _ = http(
        "PUT", f"{base}/servers/{server_id}/state", {"status": "ERROR", "message": "disk on fire"}
    )
    assert status == 204
    assert conn.compute.get_server(server_id).fault["message"] == "disk on fire"
    status, _, log = http("GET", base + "/requests?path=servers&status=503")
    assert status == 200 and len(log["requests"]) == 1
    status, _, counts = http("GET", base + "/counts")
    assert counts["by_status"]["503"] == 1
    assert http("POST", base + "/tokens/expire")[2]["expired"] >= 1
    status, _, quota = http("PUT", base + "/quotas/demo", {"instances": 3})
    assert quota["instances"] == 3
    status, _, cred = http("POST", base + "/application-credentials", {"user": "demo"})
    assert status == 201 and cred["secret"]
    assert http("POST", base + "/faults", {"kind": "bogus"})[0] == 400
    assert http("POST", base + "/reset")[0] == 204
    assert http("GET", base + "/faults")[2] == {"faults": []}

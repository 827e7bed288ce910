"""The OpenStack center against clouds that are not cloudsim's defaults: small page
caps, filters ignored, older compute APIs, shelved servers, a busy or silent Keystone."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from cloudsim.server import CloudSim
from deskbroker.centers.base import (
    CENTER_KEY,
    MachineInfo,
    PowerAction,
    ProvisionRequest,
    UnknownName,
)
from deskbroker.centers.openstack import microversion
from deskbroker.centers.openstack.driver import OpenStackCenter
from deskbroker.centers.openstack.session import CloudFailure
from deskbroker.centers.registry import open_driver
from deskbroker.domain.states import PowerState
from tests.helpers import wait_until

SPEED = 40.0


@pytest.fixture(scope="module")
def sim() -> Iterator[CloudSim]:
    simulator = CloudSim(
        projects=["demo"], clock_speed=SPEED, quota={"instances": 400, "cores": 400}
    ).start()
    yield simulator
    simulator.stop()


@pytest.fixture(autouse=True)
def _fresh(sim: CloudSim) -> None:
    sim.reset()


def _open(sim: CloudSim, **params: object) -> OpenStackCenter:
    driver = open_driver(
        "openstack",
        {
            "auth_url": sim.auth_url,
            "project_name": "demo",
            "username": "demo",
            "retry_base_s": 0.01,
            "default_network": "private",
            **params,
        },
        {"password": "password"},
    )
    assert isinstance(driver, OpenStackCenter)
    return driver


# The center the driver's builds are made for, as the engine marks them.
CENTER = "c-1"


def _request(name: str, tag: str, **extra: object) -> ProvisionRequest:
    """A build of ``name`` marked with ``tag``; ``extra`` is the cloud's own parameters."""
    return ProvisionRequest(
        name=name,
        metadata={CENTER_KEY: CENTER},
        tags=(tag,),
        parameters={"image": "cirros-0.6.2-x86_64-disk", "flavor": "m1.tiny", **extra},
    )


def _running(driver: OpenStackCenter, server_id: str) -> MachineInfo:
    found = wait_until(
        lambda: (
            (m := driver.machine(server_id)) is not None
            and m.power_state is PowerState.RUNNING
            and m
        )
    )
    assert isinstance(found, MachineInfo)
    return found


# --- paging --------------------------------------------------------------------------
@pytest.mark.parametrize(("cap", "servers"), [(100, 250), (2, 25)])
def test_every_list_is_complete_whatever_the_page_cap(
    sim: CloudSim, cap: int, servers: int
) -> None:
    ids = sim.seed_servers(servers, tags=["deskbroker"], metadata={CENTER_KEY: CENTER})
    sim.seed_images(5)
    sim.set_behaviour(max_limit=cap)
    driver = _open(sim)
    assert sorted(m.external_id for m in driver.inventory()) == sorted(ids)
    assert len(driver.images()) == 9
    assert len(driver.leaked(set(), center_id=CENTER)) == servers
    catalog = driver.catalog()
    assert len(catalog["flavors"]) == 7
    assert {"public", "private"} <= {n["name"] for n in catalog["networks"]}
    # Names are found beyond the first page too.
    assert driver._resolve("flavor", "m1.micro") == "84"
    volumes = [driver.create_volume(f"data-{i}", 1, {}) for i in range(3)]
    listed = driver.session.every("/volumes", "volumes", {"limit": 1000}, service="volume")
    assert sorted(v["id"] for v in listed) == sorted(volumes)


def test_a_page_shorter_than_the_limit_asked_for_is_not_the_end(sim: CloudSim) -> None:
    sim.seed_servers(250)
    sim.set_behaviour(max_limit={"compute": 100})
    driver = _open(sim)
    mark = sim.last_request_seq
    assert len(driver.inventory()) == 250
    pages = sim.requests(since=mark, path="/servers/detail")
    assert len(pages) == 3  # 100 + 100 + 50, each asked for 1000


# --- never act on an unverified list -----------------------------------------------------
def test_a_cloud_that_ignores_filters_gets_nothing_foreign_adopted_or_deleted(
    sim: CloudSim,
) -> None:
    foreign = sim.seed_servers(3, name_prefix="foreign")
    driver = _open(sim)
    ours = driver.create(_request("ours-1", "task-1", floating_ip=True))
    theirs = driver.create(_request("ours-2", "task-2", floating_ip=True))
    _running(driver, ours)
    _running(driver, theirs)
    kept = driver.attach_address(theirs, _request("ours-2", "task-2", floating_ip=True))
    driver.attach_address(ours, _request("ours-1", "task-1", floating_ip=True))
    sim.set_behaviour(ignore_filters=True)
    assert [m.external_id for m in driver.find_tagged("task-1")] == [ours]
    assert driver.find_tagged("task-9") == []
    assert {m.external_id for m in driver.leaked(set(), center_id=CENTER)} == {ours, theirs}
    assert not {m.external_id for m in driver.leaked(set(), center_id=CENTER)} & set(foreign)
    machine = driver.machine(ours)
    assert machine is not None
    driver.terminate(machine)
    # Only the terminated instance's own address went; the other's stays associated.
    left = driver.session.network_get("/floatingips")["floatingips"]
    assert [(f["floating_ip_address"], bool(f["port_id"])) for f in left] == [(kept, True)]


def test_a_leak_is_only_what_the_asking_center_built(sim: CloudSim) -> None:
    """Centers sharing a project share the broker tag: the mark of the center decides."""
    driver = _open(sim)
    ours = driver.create(_request("ours-1", "task-1"))
    [other] = sim.seed_servers(1, tags=["deskbroker"], metadata={CENTER_KEY: "c-2"})
    [unmarked] = sim.seed_servers(1, tags=["deskbroker"])
    assert [m.external_id for m in driver.leaked(set(), center_id=CENTER)] == [ours]
    assert [m.external_id for m in driver.leaked(set(), center_id="c-2")] == [other]
    assert unmarked not in {m.external_id for m in driver.leaked(set(), center_id="")}


def test_a_name_filter_ignored_still_resolves_the_right_image(sim: CloudSim) -> None:
    sim.set_behaviour(ignore_filters=True)
    driver = _open(sim)
    wanted = next(i for i in driver.images() if i.name == "rocky-9-desktop")
    assert driver._resolve("image", "rocky-9-desktop") == wanted.external_id


# --- microversions -----------------------------------------------------------------------
@pytest.mark.parametrize(("top", "agreed"), [("2.100", "2.79"), ("2.60", "2.60"), ("2.1", "2.1")])
def test_the_microversion_is_agreed_with_the_cloud(sim: CloudSim, top: str, agreed: str) -> None:
    sim.set_behaviour(max_microversion=top)
    sim.seed_servers(2, name_prefix="foreign")
    driver = _open(sim)
    assert driver.session.compute.header == agreed
    server_id = driver.create(_request("old-1", "task-old"))
    machine = _running(driver, server_id)
    assert [m.external_id for m in driver.find_tagged("task-old")] == [server_id]
    assert [m.external_id for m in driver.leaked(set(), center_id=CENTER)] == [server_id]
    driver.power(machine, PowerAction.STOP)
    wait_until(
        lambda: (m := driver.machine(server_id)) is not None and m.power_state is PowerState.STOPPED
    )
    assert sim.request_count(status=406) == 0
    assert sim.request_count(status=400) == 0


def test_a_compute_endpoint_without_a_version_document_is_discovered(sim: CloudSim) -> None:
    sim.set_behaviour(max_microversion="2.42")
    sim.inject_fault(404, method="GET", path="/compute/v2.1/?$", times=1)
    driver = _open(sim)
    assert driver.session.compute.header == "2.42"
    assert sim.request_count(method="GET", path="/compute/v2.1/?$", status=404) == 1


def test_agreement_rules() -> None:
    assert microversion.agree({"version": {"version": "2.95", "min_version": "2.1"}}) == (
        microversion.Compute((2, 79))
    )
    assert microversion.agree({"versions": [{"id": "v2.1", "version": "2.42"}]}) == (
        microversion.Compute((2, 42))
    )
    assert microversion.agree({"version": {"version": "", "min_version": ""}}) == (
        microversion.Compute((2, 1))
    )
    assert microversion.agree({"version": {"version": "2.99", "min_version": "2.90"}}) is None


def test_shelved_servers_are_unshelved_not_started(sim: CloudSim) -> None:
    [server_id] = sim.seed_servers(1)
    driver = _open(sim)
    sim.set_server_state(server_id, "SHELVED_OFFLOADED")
    seen = driver.machine(server_id)
    assert seen is not None and seen.power_state is PowerState.STOPPED
    driver.power(seen, PowerAction.START)  # knows it is shelved: unshelve at once
    _running(driver, server_id)
    sim.set_server_state(server_id, "SHELVED")
    blind = MachineInfo(external_id=server_id, name="x", power_state=PowerState.STOPPED)
    driver.power(blind, PowerAction.START)  # 409 for os-start, then a look, then unshelve
    _running(driver, server_id)
    assert sim.request_count(method="POST", path="/action", status=409) == 1


# --- Keystone ----------------------------------------------------------------------------
@pytest.mark.parametrize("fault", [503, 429, "reset"])
def test_keystone_trouble_is_retried_like_any_call(sim: CloudSim, fault: int | str) -> None:
    sim.seed_servers(2)
    sim.inject_fault(fault, method="POST", path="/auth/tokens", times=2, retry_after=0)
    assert len(_open(sim).inventory()) == 2
    assert sim.request_count(method="POST", path="/auth/tokens", status=201) == 1


def test_keystone_that_keeps_failing_says_so(sim: CloudSim) -> None:
    sim.inject_fault(503, method="POST", path="/auth/tokens", times=None)
    with pytest.raises(CloudFailure, match="identity service answered 503"):
        _open(sim, retries=2).inventory()


@pytest.fixture
def tarpit() -> Iterator[str]:
    """An address that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v3"
    stop.set()
    listener.close()
    for conn in held:
        conn.close()


def test_a_silent_keystone_fails_within_the_center_timeout(tarpit: str) -> None:
    driver = open_driver(
        "openstack",
        {"auth_url": tarpit, "project_name": "demo", "username": "demo", "timeout_s": 1.0},
        {"password": "password"},
    )
    started = time.monotonic()
    with pytest.raises(CloudFailure, match="did not answer within 1 s"):
        driver.inventory()
    assert time.monotonic() - started < 1.5


def test_a_silent_compute_fails_within_the_center_timeout(sim: CloudSim) -> None:
    driver = _open(sim, timeout_s=1.0)
    assert driver.inventory() == []
    sim.add_latency(5.0, method="GET", path="/servers/detail")
    started = time.monotonic()
    with pytest.raises(CloudFailure, match="did not answer within 1 s"):
        driver.inventory()
    assert time.monotonic() - started < 1.5


# --- names -------------------------------------------------------------------------------
def test_an_unknown_name_says_which(sim: CloudSim) -> None:
    driver = _open(sim)
    with pytest.raises(UnknownName, match=r"flavor 'm1\.huge' not found") as caught:
        driver.create(
            ProvisionRequest(
                name="x", parameters={"image": "cirros-0.6.2-x86_64-disk", "flavor": "m1.huge"}
            )
        )
    assert caught.value.where("lab") == "flavor 'm1.huge' not found in center lab"
    with pytest.raises(UnknownName, match="network 'nowhere' not found"):
        driver.create(
            ProvisionRequest(
                name="x",
                parameters={
                    "image": "cirros-0.6.2-x86_64-disk",
                    "flavor": "1",
                    "network": "nowhere",
                },
            )
        )
    with pytest.raises(UnknownName, match="image 'windows-95' not found"):
        driver.create(
            ProvisionRequest(name="x", parameters={"image": "windows-95", "flavor": "m1.tiny"})
        )
    assert sim.request_count(method="POST", path="/servers") == 0

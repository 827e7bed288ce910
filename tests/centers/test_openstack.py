"""The OpenStack center against cloudsim, through the real openstacksdk."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudsim.server import CloudSim
from deskbroker.centers.base import (
    CENTER_KEY,
    BuildLimits,
    CenterDriver,
    MachineInfo,
    PowerAction,
    ProvisionRequest,
    QuotaExceeded,
)
from deskbroker.centers.openstack.driver import OpenStackCenter
from deskbroker.centers.openstack.session import CloudFailure
from deskbroker.centers.registry import open_driver
from deskbroker.domain.states import PowerState
from tests.centers.conformance import CenterConformance
from tests.helpers import Api, run_queued_scan, wait_until

SPEED = 40.0


@pytest.fixture(scope="module")
def sim() -> Iterator[CloudSim]:
    simulator = CloudSim(
        projects=["demo", "other"], clock_speed=SPEED, quota={"instances": 10}
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
            "region_name": "RegionOne",
            "retry_base_s": 0.01,
            "default_network": "private",
            **params,
        },
        {"password": "password"},
    )
    assert isinstance(driver, OpenStackCenter)
    return driver


@pytest.fixture
def driver(sim: CloudSim) -> CenterDriver:
    sim.seed_servers(3)
    return _open(sim)


@pytest.fixture
def provision_request() -> ProvisionRequest | None:
    return ProvisionRequest(
        name="conf-001",
        parameters={"image": "cirros-0.6.2-x86_64-disk", "flavor": "m1.tiny"},
        metadata={"deskbroker_pool": "p1", "deskbroker_desktop": "d1", CENTER_KEY: "c-conformance"},
        tags=("task-conformance",),
    )


class TestOpenStackCenter(CenterConformance):
    """The shared contract, plus what only a cloud does."""


def test_inventory_pages_through_raw_json(sim: CloudSim) -> None:
    sim.seed_servers(2500)
    driver = _open(sim)
    # CPU time of the process (the driver, its helper thread and the simulator): a loaded
    # machine stretches wall time, not the work.
    started = time.process_time()
    machines = driver.inventory()
    elapsed = time.process_time() - started
    assert len(machines) == 2500
    assert driver.session.requests == 4  # the version document, then 1000 + 1000 + 500
    assert elapsed < 5, f"listing 2500 servers took {elapsed:.2f} s of CPU"


def test_incremental_sees_changes_and_tombstones(sim: CloudSim) -> None:
    ids = sim.seed_servers(5)
    driver = _open(sim)
    time.sleep(2.1)  # Nova compares whole seconds; let the seeding second pass
    full = driver.changes(None)
    assert len(full.machines) == 5 and full.gone == []
    since = full.cursor
    assert since is not None
    nothing = driver.changes(since)
    assert nothing.machines == [] and nothing.gone == []
    assert driver.session.requests == 3  # the version document, then one page each
    sim.set_server_state(ids[0], "SHUTOFF")
    sim.set_server_state(ids[1], "DELETED")
    seen = driver.changes(since)
    assert [m.external_id for m in seen.machines] == [ids[0]]
    assert seen.machines[0].power_state is PowerState.STOPPED
    assert seen.gone == [ids[1]]


def test_quota_is_reported_in_words(sim: CloudSim) -> None:
    driver = _open(sim)
    sim.seed_servers(10)
    with pytest.raises(QuotaExceeded, match="quota exceeded: instances 10 of 10"):
        driver.create(
            ProvisionRequest(
                name="x", parameters={"image": "cirros-0.6.2-x86_64-disk", "flavor": "m1.tiny"}
            )
        )


def test_limits_come_from_the_centers_params(sim: CloudSim) -> None:
    assert _open(sim).limits() == BuildLimits(max_in_flight=20, build_timeout_s=900.0)
    tight = _open(sim, max_in_flight=3, build_timeout_s=60)
    assert tight.limits() == BuildLimits(max_in_flight=3, build_timeout_s=60.0)


def test_a_failed_build_reports_its_fault_typed(sim: CloudSim) -> None:
    driver = _open(sim)
    sim.inject_fault("build_error", times=1)
    machine_id = driver.create(
        ProvisionRequest(
            name="x", parameters={"image": "cirros-0.6.2-x86_64-disk", "flavor": "m1.tiny"}
        )
    )
    failed = wait_until(
        lambda: (
            (m := driver.machine(machine_id)) is not None
            and m.power_state is PowerState.ERROR
            and m
        )
    )
    assert isinstance(failed, MachineInfo)
    assert failed.fault.startswith("No valid host") and failed.desktop_id == ""


def test_bad_credentials_are_explained(sim: CloudSim) -> None:
    driver = open_driver(
        "openstack",
        {"auth_url": sim.auth_url, "project_name": "demo", "username": "demo"},
        {"password": "wrong"},
    )
    with pytest.raises(CloudFailure, match="refused the center's credentials"):
        driver.inventory()


def test_retries_503_with_retry_after_and_resets(sim: CloudSim) -> None:
    sim.seed_servers(2)
    driver = _open(sim)
    driver.inventory()  # authenticated
    sim.inject_fault(503, method="GET", path="/servers", times=2, retry_after=0)
    assert len(driver.inventory()) == 2
    sim.inject_fault("reset", method="GET", path="/servers", times=1)
    assert len(driver.inventory()) == 2


def test_persistent_500_gives_up_with_the_cloud_message(sim: CloudSim) -> None:
    driver = _open(sim, retries=1)
    driver.inventory()
    sim.inject_fault(500, method="GET", path="/servers", times=None)
    with pytest.raises(CloudFailure, match="500"):
        driver.inventory()


def test_floating_ip_is_allocated_associated_and_released(sim: CloudSim) -> None:
    driver = _open(sim)
    request = ProvisionRequest(
        name="fip-001",
        parameters={
            "image": "cirros-0.6.2-x86_64-disk",
            "flavor": "m1.tiny",
            "floating_ip": True,
            "security_groups": ["default"],
        },
        user_data="#cloud-config\n",
        tags=("task-fip",),
    )
    assert driver.needs_address(request)
    assert not driver.needs_address(ProvisionRequest(name="plain", parameters={"image": "i"}))
    server_id = driver.create(request)
    wait_until(
        lambda: (m := driver.machine(server_id)) is not None and m.power_state is PowerState.RUNNING
    )
    address = driver.attach_address(server_id, request)
    assert address.startswith("127.200.")
    machine = driver.machine(server_id)
    assert machine is not None and machine.address == address
    floating = driver.session.network_get("/floatingips")["floatingips"]
    assert [f["floating_ip_address"] for f in floating] == [address]
    driver.terminate(machine)
    assert driver.session.network_get("/floatingips")["floatingips"] == []


def test_power_actions_follow_the_409_rules(sim: CloudSim) -> None:
    driver = _open(sim)
    [server_id] = sim.seed_servers(1)
    machine = driver.machine(server_id)
    assert machine is not None
    with pytest.raises(CloudFailure, match="409"):
        driver.power(machine, PowerAction.START)  # already running
    driver.power(machine, PowerAction.SUSPEND)
    wait_until(
        lambda: (
            (m := driver.machine(server_id)) is not None and m.power_state is PowerState.SUSPENDED
        )
    )
    driver.power(machine, PowerAction.RESUME)
    wait_until(
        lambda: (m := driver.machine(server_id)) is not None and m.power_state is PowerState.RUNNING
    )
    driver.power(machine, PowerAction.REBOOT_HARD)


def test_catalog_lists_the_pickers(sim: CloudSim) -> None:
    catalog = _open(sim).catalog()
    assert {"m1.tiny", "m1.small"} <= {f["name"] for f in catalog["flavors"]}
    assert {"public", "private"} <= {n["name"] for n in catalog["networks"]}
    assert catalog["availability_zones"][0]["name"] == "nova"
    assert any(i["name"].startswith("cirros") for i in catalog["images"])


def test_a_clouds_yaml_entry_is_enough(
    sim: CloudSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.seed_servers(2)
    config = tmp_path / "clouds.yaml"
    config.write_text(sim.clouds_yaml("lab"))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(config))
    driver = open_driver("openstack", {"cloud": "lab"}, {})
    assert len(driver.inventory()) == 2


def test_application_credentials(sim: CloudSim) -> None:
    sim.seed_servers(1)
    credential = sim.create_application_credential(user="demo", project="demo")
    driver = open_driver(
        "openstack",
        {"auth_url": sim.auth_url, "application_credential_id": credential["id"]},
        {"application_credential_secret": credential["secret"]},
    )
    assert len(driver.inventory()) == 1
    wrong = open_driver(
        "openstack",
        {"auth_url": sim.auth_url, "application_credential_id": credential["id"]},
        {"application_credential_secret": "not-it"},
    )
    with pytest.raises(CloudFailure, match="refused"):
        wrong.inventory()


def test_an_expired_token_is_renewed(sim: CloudSim) -> None:
    sim.seed_servers(1)
    driver = _open(sim)
    assert len(driver.inventory()) == 1
    sim.expire_tokens()
    assert len(driver.inventory()) == 1


def test_a_center_with_failing_credentials_says_so(sim: CloudSim, api: Api) -> None:
    center = api.post(
        "centers",
        {
            "name": "bad-creds",
            "kind": "openstack",
            "params": {"auth_url": sim.auth_url, "project_name": "demo", "username": "demo"},
            "secrets": {"password": "wrong"},
        },
    )
    center = run_queued_scan(api, center["id"])
    assert center["status"] == "error"
    assert "refused the center's credentials" in center["status_message"]
    assert "wrong" not in str(api.get(f"centers/{center['id']}"))


def test_scans_list_images_and_the_catalog_feeds_pickers(sim: CloudSim, api: Api) -> None:
    center = api.post(
        "centers",
        {
            "name": "pickers",
            "kind": "openstack",
            "params": {"auth_url": sim.auth_url, "project_name": "demo", "username": "demo"},
            "secrets": {"password": "password"},
        },
    )
    run_queued_scan(api, center["id"])
    images = api.get(f"images?center_id={center['id']}")["items"]
    assert {"cirros-0.6.2-x86_64-disk", "ubuntu-22.04-desktop"} <= {i["name"] for i in images}
    catalog = api.get(f"centers/{center['id']}/catalog")
    assert "m1.small" in {f["name"] for f in catalog["flavors"]}
    assert "private" in {n["name"] for n in catalog["networks"]}
    static = api.post("centers", {"name": "lab", "kind": "static", "params": {"machines": []}})
    assert api.get(f"centers/{static['id']}/catalog")["flavors"] == []

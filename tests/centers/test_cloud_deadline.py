"""A cloud whose compute endpoint drips its answer one byte a second (each read beats the
read timeout, the call never ends) is given up on at the center's ``timeout_s``, and the
helper threads left behind by such calls stay within their cap."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import requests

from cloudsim.server import CloudSim
from deskbroker.centers.openstack.driver import OpenStackCenter
from deskbroker.centers.openstack.overdue import Helpers, NoHelperLeft, Overdue
from deskbroker.centers.openstack.session import CloudFailure
from deskbroker.centers.registry import open_driver
from tests.helpers import wait_until
from tests.tarpit import HTTP_HEAD, drip

TIMEOUT_S = 2.0
SLACK_S = 1.0


@pytest.fixture(scope="module")
def sim() -> Iterator[CloudSim]:
    simulator = CloudSim(projects=["demo"]).start()
    yield simulator
    simulator.stop()


def test_a_dripping_compute_endpoint_is_given_up_on_at_the_timeout(sim: CloudSim) -> None:
    assert sim.core is not None
    driver = open_driver(
        "openstack",
        {
            "auth_url": sim.auth_url,
            "project_name": "demo",
            "username": "demo",
            "timeout_s": TIMEOUT_S,  # also each read's timeout: the drip beats it
            "retry_base_s": 0.01,
        },
        {"password": "password"},
    )
    assert isinstance(driver, OpenStackCenter)
    assert driver.inventory() == []  # authenticated, microversion agreed
    real = sim.core.base_url
    with drip(HTTP_HEAD) as port:
        # The next token's catalog sends compute to the drip; Keystone stays real.
        sim.core.base_url = f"http://127.0.0.1:{port}"
        driver.session.connection().session.auth.invalidate()
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(CloudFailure, match=f"did not answer within {TIMEOUT_S:g} s"):
                driver.inventory()
            took = time.monotonic() - started
            assert TIMEOUT_S - 0.1 <= took < TIMEOUT_S + SLACK_S, took
    sim.core.base_url = real


def test_calls_given_up_on_hold_at_most_the_cap_of_threads() -> None:
    helpers = Helpers(3)
    before = threading.active_count()
    with drip(HTTP_HEAD) as port:
        url = f"http://127.0.0.1:{port}/servers"
        for _ in range(3):
            with pytest.raises(Overdue):
                helpers.run(lambda: requests.get(url, timeout=5), 0.3, "cloud-call")
        assert helpers.live == 3
        started = time.monotonic()
        for _ in range(20):
            with pytest.raises(NoHelperLeft):
                helpers.run(lambda: requests.get(url, timeout=5), 0.3, "cloud-call")
        assert time.monotonic() - started < 0.5  # refused at once, no thread started
        assert helpers.live == 3
    # The drip closed its connections: the helpers end and their places come back.
    wait_until(lambda: not helpers.live, "the helper threads to end", timeout_s=10)
    assert threading.active_count() <= before + 1
    assert helpers.run(lambda: "answered", 1.0, "cloud-call") == "answered"


def test_one_tenants_hanging_calls_hold_at_most_its_share_of_the_places() -> None:
    """A tenant whose clouds drip their answers (a tenant administrator may point a
    center's auth_url anywhere) keeps at most its share of the helpers; another
    tenant's calls still find places."""
    helpers = Helpers(4, per_owner=2)
    with drip(HTTP_HEAD) as port:
        url = f"http://127.0.0.1:{port}/servers"
        for _ in range(2):
            with pytest.raises(Overdue):
                helpers.run(lambda: requests.get(url, timeout=5), 0.3, "cloud-call", "acme")
        with pytest.raises(NoHelperLeft, match="this tenant's clouds"):
            helpers.run(lambda: requests.get(url, timeout=5), 0.3, "cloud-call", "acme")
        assert (helpers.live, helpers.live_of("acme")) == (2, 2)
        assert helpers.run(lambda: "answered", 1.0, "cloud-call", "globex") == "answered"
    wait_until(lambda: not helpers.live, "the helper threads to end", timeout_s=10)
    assert helpers.live_of("acme") == 0
    assert helpers.run(lambda: "answered", 1.0, "cloud-call", "acme") == "answered"


def test_the_broker_opens_a_centers_driver_under_its_tenant(sim: CloudSim) -> None:
    """The driver cache names each driver's tenant, so its cloud calls count there."""
    from deskbroker.services.center_drivers import CenterDrivers
    from deskbroker.store.tables import Center

    center = Center(
        id="c1",
        tenant_id="acme",
        name="cloud",
        kind="openstack",
        params={"auth_url": sim.auth_url, "project_name": "demo", "username": "demo"},
        secrets_sealed=None,
    )
    driver = CenterDrivers(secrets=None).get(center)  # type: ignore[arg-type]
    assert isinstance(driver, OpenStackCenter)
    assert (driver.tenant_id, driver.session.owner) == ("acme", "acme")

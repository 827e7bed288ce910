"""Tests against a real OpenStack cloud (DevStack or a production project).

They run only when ``DESKBROKER_TEST_CLOUD`` names a clouds.yaml entry; otherwise they
are deselected (not skipped) so an ordinary run reports only what it ran. Everything
they create carries a run tag and is removed at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from deskbroker.centers.openstack.driver import OpenStackCenter
from deskbroker.centers.registry import open_driver

CLOUD = os.environ.get("DESKBROKER_TEST_CLOUD")
RUN_TAG = f"deskbroker-test-{uuid.uuid4().hex[:8]}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CLOUD:
        return
    keep = [i for i in items if "realcloud" not in i.keywords]
    dropped = [i for i in items if "realcloud" in i.keywords]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="module")
def cloud_driver() -> Iterator[OpenStackCenter]:
    assert CLOUD, "DESKBROKER_TEST_CLOUD names the clouds.yaml entry to use"
    driver = open_driver(
        "openstack",
        {
            "cloud": CLOUD,
            "broker_tag": RUN_TAG,
            "default_network": os.environ.get("DESKBROKER_TEST_NETWORK"),
        },
        {},
    )
    assert isinstance(driver, OpenStackCenter)
    yield driver
    # Whatever a failed test left behind goes too.
    for machine in driver.find_tagged(RUN_TAG):
        driver.terminate(machine)

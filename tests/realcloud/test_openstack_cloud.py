"""The OpenStack driver's contract against a real cloud (run with DESKBROKER_TEST_CLOUD)."""

from __future__ import annotations

import os

import pytest

from deskbroker.centers.base import CenterDriver, ProvisionRequest
from deskbroker.centers.openstack.driver import OpenStackCenter
from tests.centers.conformance import CenterConformance
from tests.realcloud.conftest import RUN_TAG

pytestmark = pytest.mark.realcloud


@pytest.fixture
def driver(cloud_driver: OpenStackCenter) -> CenterDriver:
    return cloud_driver


@pytest.fixture
def provision_request() -> ProvisionRequest | None:
    return ProvisionRequest(
        name=f"{RUN_TAG}-conformance",
        parameters={
            "image": os.environ.get("DESKBROKER_TEST_IMAGE", "cirros-0.6.2-x86_64-disk"),
            "flavor": os.environ.get("DESKBROKER_TEST_FLAVOR", "m1.tiny"),
        },
        tags=(f"{RUN_TAG}-conformance",),
    )


class TestRealCloud(CenterConformance):
    """The same contract as against cloudsim, with the cloud's real timings."""

    def test_catalog(self, cloud_driver: OpenStackCenter) -> None:
        catalog = cloud_driver.catalog()
        assert catalog["flavors"] and catalog["images"]

"""The static center passes the conformance suite."""

from __future__ import annotations

import pytest

from deskbroker.centers.base import CenterDriver, ProvisionRequest
from deskbroker.centers.registry import open_driver, validate_params
from deskbroker.errors import InvalidInput
from tests.centers.conformance import CenterConformance


@pytest.fixture
def driver() -> CenterDriver:
    return open_driver(
        "static",
        {
            "machines": [
                {"name": "lab-1", "address": "127.0.3.1", "ports": {"rdp": 3390}},
                {"name": "lab-2", "address": "127.0.3.2", "attributes": {"room": "B12"}},
            ]
        },
        {},
    )


@pytest.fixture
def provision_request() -> ProvisionRequest | None:
    return None


class TestStaticCenter(CenterConformance):
    def test_ports_and_attributes_reach_the_desktop(self, driver: CenterDriver) -> None:
        by_name = {m.name: m for m in driver.inventory()}
        assert by_name["lab-1"].attributes["ports"] == {"rdp": 3390}
        assert by_name["lab-2"].attributes["room"] == "B12"

    def test_bad_params_are_explained(self) -> None:
        with pytest.raises(InvalidInput, match=r"machines\.0\.address"):
            validate_params("static", {"machines": [{"name": "x"}]})
        with pytest.raises(InvalidInput, match="unknown center kind"):
            validate_params("nope", {})

"""The vSphere center passes the conformance suite on govmomi's vCenter simulator."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from deskbroker.centers.base import (
    CENTER_KEY,
    DESKTOP_KEY,
    CenterDriver,
    ProvisionRequest,
)
from deskbroker.centers.registry import open_driver
from deskbroker.centers.vsphere import VsphereCenter
from deskbroker.domain.states import PowerState
from tests.centers.conformance import CenterConformance
from tests.centers.vcsim import PASSWORD, Vcsim, running


@pytest.fixture(scope="session")
def vcsim() -> Iterator[Vcsim]:
    with running("-vms", "2", "-templates", "2", "-datastores", "2") as sim:
        yield sim


@pytest.fixture
def driver(vcsim: Vcsim) -> Iterator[CenterDriver]:
    made = open_driver("vsphere", vcsim.params(), {"password": PASSWORD})
    yield made
    assert isinstance(made, VsphereCenter)
    # What a test built is removed, so the next one sees the simulator as it was.
    for machine in made.inventory():
        if machine.desktop_id:
            made.terminate(machine)
    made.vcenter.close()


def request(name: str | None = None, **parameters: object) -> ProvisionRequest:
    name = name or f"vdi-{uuid.uuid4().hex[:8]}"
    return ProvisionRequest(
        name=name,
        metadata={
            CENTER_KEY: "center-1",
            DESKTOP_KEY: f"desktop-{name}",
            "deskbroker_task": "task-1",
            "deskbroker_enrol": "a-secret",
            "department": "R&D",
        },
        tags=(f"deskbroker-task-{name}",),
        parameters={"template": "template-0", **parameters},
    )


@pytest.fixture
def provision_request() -> ProvisionRequest:
    return request()


class TestVsphereCenter(CenterConformance):
    def test_templates_are_images_not_machines(self, driver: CenterDriver) -> None:
        images = {i.name: i for i in driver.images()}
        assert set(images) == {"template-0", "template-1"}
        assert images["template-0"].attributes["linked_clone"] is True
        assert images["template-1"].attributes["linked_clone"] is False
        names = {m.name for m in driver.inventory()}
        assert not names & set(images)
        assert {m.power_state for m in driver.inventory()} == {PowerState.RUNNING}

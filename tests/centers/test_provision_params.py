"""A pool's provisioning parameters: the broker's own are the API's, the rest are the
provisioning center's, described and checked by its driver's ``ProvisionParams``."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from tests.centers.plugins import install
from tests.engine.conftest import run_until
from tests.helpers import Api

_OPENSTACK = {
    "auth_url": "http://127.0.0.1:9/v3",
    "project_name": "demo",
    "username": "demo",
}

# A third-party hypervisor keeping its machines in memory: it builds at once.
HYPERVISOR = """
from dataclasses import replace
from pydantic import ConfigDict, Field
from deskbroker.centers.base import ProvisionRequest
from deskbroker.domain.states import PowerState

MACHINES: dict[str, tuple[MachineInfo, tuple[str, ...]]] = {}

class Provision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template: str = Field(min_length=1)
    vcpus: int = Field(default=2, ge=1, le=64)

class Hypervisor(CenterDriver):
    kind: ClassVar[str] = "hypervisor"
    Params: ClassVar[type[BaseModel]] = Params
    ProvisionParams: ClassVar[type[BaseModel] | None] = Provision
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.INVENTORY, Capability.PROVISION, Capability.TERMINATE, Capability.LEAK_SWEEP}
    )

    def inventory(self) -> list[MachineInfo]:
        return [machine for machine, _ in MACHINES.values()]

    def create(self, request: ProvisionRequest) -> str:
        wanted = self.provision_params(request)
        assert isinstance(wanted, Provision)
        MACHINES[request.name] = (
            MachineInfo(
                external_id=request.name,
                name=request.name,
                address="127.0.0.1",
                power_state=PowerState.RUNNING,
                attributes={"template": wanted.template, "vcpus": wanted.vcpus},
                desktop_id=request.metadata["deskbroker_desktop"],
            ),
            request.tags,
        )
        return request.name

    def terminate(self, machine: MachineInfo) -> None:
        MACHINES.pop(machine.external_id, None)

    def leaked(self, known_external_ids: set[str], *, center_id: str) -> list[MachineInfo]:
        return [m for m in self.inventory() if m.external_id not in known_external_ids]

    def find_tagged(self, tag: str) -> list[MachineInfo]:
        return [machine for machine, tags in MACHINES.values() if tag in tags]
"""


def _center(api: Api, kind: str, params: dict[str, Any]) -> str:
    center = api.post("centers", {"name": f"c-{kind}", "kind": kind, "params": params})
    return str(center["id"])


def _pool(center_id: str | None, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "p",
        "center_ids": [center_id] if center_id else [],
        "provisioning": {"parameters": {"name_template": "vdi-{SEQUENCE:2}", **parameters}},
    }


def test_an_openstack_pool_is_checked_by_the_openstack_driver(api: Api) -> None:
    cloud = _center(api, "openstack", _OPENSTACK)
    refused = api.post("pools", _pool(cloud, {"flavor": ""}), status=422)["detail"]
    assert refused.startswith("provisioning.parameters.flavor: String should have at least 1")
    refused = api.post("pools", _pool(cloud, {"flavour": "m1.tiny"}), status=422)["detail"]
    assert refused == "provisioning.parameters.flavour: Extra inputs are not permitted"
    assert api.get("pools")["items"] == []

    pool = api.post("pools", _pool(cloud, {"image": "cirros", "flavor": "m1.tiny"}))
    parameters = api.get(f"pools/{pool['id']}")["provisioning"]["parameters"]
    # Stored as the driver reads them back, defaults included: a GET can be sent back.
    assert parameters["image"] == "cirros" and parameters["flavor"] == "m1.tiny"
    assert parameters["floating_ip"] is False and parameters["security_groups"] == []
    assert parameters["name_template"] == "vdi-{SEQUENCE:2}"
    again = api.get(f"pools/{pool['id']}")["provisioning"]
    assert api.patch(f"pools/{pool['id']}", {"provisioning": again})["provisioning"] == again


def test_a_center_that_cannot_provision_takes_no_center_parameters(api: Api) -> None:
    lab = _center(api, "static", {"machines": []})
    refused = api.post("pools", _pool(lab, {"image": "cirros"}), status=422)["detail"]
    assert refused == (
        "provisioning.parameters: a static center cannot provision; it takes no image"
    )
    refused = api.post("pools", _pool(None, {"flavor": "m1.tiny"}), status=422)["detail"]
    assert refused == (
        "provisioning.parameters.flavor: a center's parameter, and the pool has no center; "
        "give it one first"
    )
    # The broker's own parameters need no center.
    api.post("pools", _pool(None, {"start_unavailable": True}))


def test_a_third_party_driver_brings_its_own_parameters(api: Api, plugin: Path) -> None:
    install(plugin, "acme_hypervisor", HYPERVISOR, {"hypervisor": "Hypervisor"})
    host = _center(api, "hypervisor", {})
    refused = api.post("pools", _pool(host, {"template": "win11", "vcpus": 0}), status=422)
    assert refused["detail"] == (
        "provisioning.parameters.vcpus: Input should be greater than or equal to 1"
    )
    refused = api.post("pools", _pool(host, {"image": "cirros"}), status=422)["detail"]
    assert refused == "provisioning.parameters.template: Field required"
    pool = api.post("pools", _pool(host, {"template": "win11"}))
    parameters = api.get(f"pools/{pool['id']}")["provisioning"]["parameters"]
    assert (parameters["template"], parameters["vcpus"]) == ("win11", 2)
    assert "image" not in parameters


def test_a_third_party_driver_provisions_through_the_engine(
    api: Api, ctx: BrokerContext, plugin: Path
) -> None:
    """A folder plus an entry point: the engine builds on a driver it never imported."""
    install(plugin, "acme_hypervisor", HYPERVISOR, {"hypervisor": "Hypervisor"})
    machines = importlib.import_module("acme_hypervisor").MACHINES
    machines.clear()
    host = _center(api, "hypervisor", {})
    body = _pool(host, {"template": "win11", "vcpus": 4})
    body["provisioning"].update(enabled=True, min_unassigned=2, max_total=2)
    pool = api.post("pools", body)
    engine = Engine(ctx, workers=2)
    try:
        run_until(engine, lambda: _counts(api, pool["id"])["available"] == 2)
    finally:
        engine.stop()
    assert sorted(machines) == ["vdi-01", "vdi-02"]
    for machine, _ in machines.values():
        assert (machine.attributes["template"], machine.attributes["vcpus"]) == ("win11", 4)
    members = api.get(f"pools/{pool['id']}/members")["items"]
    assert sorted(d["name"] for d in members) == ["vdi-01", "vdi-02"]


def _counts(api: Api, pool_id: str) -> dict[str, int]:
    counts: dict[str, int] = api.get(f"pools/{pool_id}/status")["counts"]
    return counts

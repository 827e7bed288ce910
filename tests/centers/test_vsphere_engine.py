"""The engine on a vSphere center (govmomi's simulator): a provisioning pool fills to
its target by cloning the template, each clone marked with its desktop and running, and
the leak sweep finds a clone the broker lost."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from deskbroker.centers.base import CENTER_KEY, ProvisionRequest
from deskbroker.centers.registry import open_driver
from deskbroker.centers.vsphere import VsphereCenter, inventory, marks
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.maintenance import leak_sweep
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import utcnow
from tests.centers.vcsim import PASSWORD, Vcsim, running
from tests.helpers import Api, run_queued_scan, wait_until

TARGET = 2


@pytest.fixture
def sim() -> Iterator[Vcsim]:
    # No VMs of its own: a pool would take them in; only the templates.
    with running("-vms", "0", "-templates", "2") as made:
        yield made


@pytest.fixture
def look(sim: Vcsim) -> Iterator[VsphereCenter]:
    driver = open_driver("vsphere", sim.params(), {"password": PASSWORD})
    assert isinstance(driver, VsphereCenter)
    yield driver
    driver.vcenter.close()


@pytest.fixture
def engine(ctx: BrokerContext) -> Iterator[Engine]:
    eng = Engine(ctx, workers=4)
    eng.recover()
    yield eng
    eng.stop()


def _status(api: Api, pool_id: str) -> dict[str, Any]:
    status: dict[str, Any] = api.get(f"pools/{pool_id}/status")
    return status


def _annotations(look: VsphereCenter) -> dict[str, str]:
    si = look.vcenter.service()
    dc = inventory.datacenter(si, None)
    return {
        str(p["config.instanceUuid"]): str(p.get("config.annotation") or "")
        for _, p in inventory.collect(
            si, dc.vmFolder, inventory.vim.VirtualMachine, inventory.VM_PROPERTIES
        )
        if not p.get("config.template")
    }


def test_a_pool_fills_to_its_target_by_cloning(
    api: Api, engine: Engine, sim: Vcsim, look: VsphereCenter
) -> None:
    center = api.post(
        "centers",
        {
            "name": "vc",
            "kind": "vsphere",
            "params": sim.params(reap_leaks=True),
            "secrets": {"password": PASSWORD},
        },
    )
    assert "secrets" not in center or not center["secrets"]
    scanned = run_queued_scan(api, center["id"])
    assert scanned["status"] == "ok", scanned["status_message"]
    pool = api.post(
        "pools",
        {
            "name": "vc",
            "center_ids": [center["id"]],
            "provisioning": {
                "enabled": True,
                "min_unassigned": TARGET,
                "max_total": TARGET,
                "parameters": {"name_template": "vdi-{SEQUENCE:3}", "template": "template-0"},
            },
        },
    )

    def filled() -> bool:
        engine.run_once()
        return bool(_status(api, pool["id"])["counts"]["available"] >= TARGET)

    wait_until(filled, lambda: f"the pool to fill: {_status(api, pool['id'])}", timeout_s=90)
    members = api.get(f"pools/{pool['id']}/members")["items"]
    assert len(members) == TARGET
    notes = _annotations(look)
    # Exactly the pool's desktops were cloned, each marked with its desktop, running,
    # with the address its guest reported.
    assert set(notes) == {api.get(f"desktops/{m['id']}")["external_id"] for m in members}
    for member in members:
        desktop = api.get(f"desktops/{member['id']}")
        found = marks.read(notes[desktop["external_id"]])
        assert found is not None and found.metadata["deskbroker_desktop"] == member["id"]
        assert found.metadata[CENTER_KEY] == center["id"]
        machine = look.machine(desktop["external_id"])
        assert machine is not None and machine.power_state.value == "running"
        assert machine.name.startswith("vdi-")
    # An administrator's power action reaches the VM in vCenter, and back.
    external = api.get(f"desktops/{members[0]['id']}")["external_id"]
    for action, state in (("suspend", "suspended"), ("resume", "running")):
        done = api.post(f"desktops/{members[0]['id']}/power", {"action": action}, status=200)
        assert done["action"] == action
        seen = look.machine(external)
        assert seen is not None and seen.power_state.value == state
    # Running the engine again builds nothing more: the pool is at its target.
    engine.run_once()
    assert len(_annotations(look)) == TARGET

    # A clone the broker lost (a crash between the call and the record) is a leak.
    lost = look.create(
        ProvisionRequest(
            name="lost-1",
            metadata={CENTER_KEY: center["id"]},
            parameters={"template": "template-1"},
        )
    )
    said = leak_sweep(api.ctx, DriverCache(api.ctx), center["id"], utcnow())
    assert said == "1 leaked instance(s) removed"
    [event] = api.get("events?kind=leak")["items"]
    assert event["detail"]["instances"] == [lost] and event["detail"]["removed"] is True
    assert look.machine(lost) is None
    assert len(_annotations(look)) == TARGET  # the pool's own are untouched

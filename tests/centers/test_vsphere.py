"""The vSphere center passes the conformance suite on govmomi's vCenter simulator."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pyVmomi import vim

from deskbroker.centers.base import (
    CENTER_KEY,
    DESKTOP_KEY,
    CenterDriver,
    MachineInfo,
    PowerAction,
    ProvisionRequest,
    QuotaExceeded,
    UnknownName,
)
from deskbroker.centers.registry import open_driver
from deskbroker.centers.vsphere import VsphereCenter, inventory, marks
from deskbroker.centers.vsphere.connection import VSPHERE_CALLS
from deskbroker.centers.vsphere.params import VsphereParams
from deskbroker.domain.states import PowerState
from deskbroker.errors import CenterError
from deskbroker.outbound import host_side_of
from tests.centers.conformance import CenterConformance
from tests.centers.vcsim import PASSWORD, Vcsim, running
from tests.helpers import wait_until
from tests.tarpit import tarpit


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
        catalog = driver.catalog()
        assert [d["name"] for d in catalog["datastores"]] == ["LocalDS_0", "LocalDS_1"]
        assert all(d["free_gb"] > 0 for d in catalog["datastores"])
        # One cluster of the simulator's two hosts (its -hosts default).
        assert [c["hosts"] for c in catalog["clusters"]] == [2]

    def test_every_power_action_reaches_the_vm(self, driver: CenterDriver) -> None:
        machine_id = driver.create(request())

        def state() -> PowerState:
            found = driver.machine(machine_id)
            assert found is not None
            return found.power_state

        machine = MachineInfo(external_id=machine_id, name="clone")
        assert state() is PowerState.RUNNING
        driver.power(machine, PowerAction.SUSPEND)
        assert state() is PowerState.SUSPENDED
        driver.power(machine, PowerAction.RESUME)
        assert state() is PowerState.RUNNING
        # govmomi's simulator has no RebootGuest (vCenter has): the request reached it.
        with pytest.raises(CenterError, match="does not implement: RebootGuest"):
            driver.power(machine, PowerAction.REBOOT)
        driver.power(machine, PowerAction.REBOOT_HARD)
        assert state() is PowerState.RUNNING
        driver.power(machine, PowerAction.STOP)  # the guest is asked to shut down
        wait_until(lambda: state() is PowerState.STOPPED, "the guest to shut down")
        driver.power(machine, PowerAction.STOP)  # already off: nothing to do
        with pytest.raises(CenterError, match="off: start it"):
            driver.power(machine, PowerAction.RESUME)
        with pytest.raises(CenterError, match="nothing to suspend"):
            driver.power(machine, PowerAction.SUSPEND)
        driver.power(machine, PowerAction.START)
        assert state() is PowerState.RUNNING
        driver.power(machine, PowerAction.SUSPEND)
        driver.power(machine, PowerAction.STOP)  # suspended: powered off
        assert state() is PowerState.STOPPED
        with pytest.raises(CenterError, match="is gone"):
            driver.power(MachineInfo(external_id=str(uuid.uuid4()), name="x"), PowerAction.START)

    def test_marks_live_in_the_annotation_and_the_secret_is_not_there(
        self, driver: CenterDriver
    ) -> None:
        assert isinstance(driver, VsphereCenter)
        name = f"vdi-{uuid.uuid4().hex[:8]}"
        machine_id = driver.create(request(name))
        notes = _properties(driver, machine_id, ["config.annotation"])["config.annotation"]
        found = marks.read(notes)
        assert found is not None and found.broker == "deskbroker"
        assert found.metadata[DESKTOP_KEY] == f"desktop-{name}"
        assert found.metadata["department"] == "R&D"
        assert "a-secret" not in notes  # the agent's enrolment secret is not written
        machine = driver.machine(machine_id)
        assert machine is not None and machine.desktop_id == f"desktop-{name}"
        assert machine.address.startswith("127.0.1.") or machine.address == ""
        assert machine_id in {m.external_id for m in driver.find_tagged(f"deskbroker-task-{name}")}
        # Another broker (another tag) sharing the vCenter sees it as not its own.
        other = open_driver(
            "vsphere",
            {**driver.vs_params.model_dump(), "broker_tag": "other"},
            {"password": PASSWORD},
        )
        assert other.leaked(set(), center_id="center-1") == []
        with pytest.raises(CenterError, match="not built by this broker"):
            other.terminate(machine)

    def test_a_vm_the_broker_did_not_build_is_never_touched(self, driver: CenterDriver) -> None:
        assert isinstance(driver, VsphereCenter)
        hand_made = next(m for m in driver.inventory() if m.name == "DC0_C0_RP0_VM0")
        assert hand_made.desktop_id == "" and hand_made.attributes["tags"] == ""
        assert hand_made not in driver.leaked(set(), center_id="center-1")
        with pytest.raises(CenterError, match="not built by this broker"):
            driver.terminate(hand_made)
        with pytest.raises(CenterError, match="not built by this broker"):
            driver.revert_to_snapshot(hand_made)
        assert driver.machine(hand_made.external_id) is not None

    def test_unknown_names_fail_the_build_at_once(self, driver: CenterDriver, vcsim: Vcsim) -> None:
        with pytest.raises(UnknownName, match="template 'nope'"):
            driver.create(request(template="nope"))
        with pytest.raises(CenterError, match="not a usable VM name"):
            driver.create(request(name="../x"))
        with pytest.raises(ValidationError):
            driver.create(request(template="a/b"))
        for params, what in [
            ({"datastores": ["LocalDS_9"]}, "datastore 'LocalDS_9'"),
            ({"folder": "Nowhere"}, "folder 'Nowhere'"),
            ({"resource_pool": "DC0_C0/Resources/None"}, "resource pool"),
            ({"datacenter": "DC9"}, "datacenter 'DC9'"),
        ]:
            bad = open_driver("vsphere", vcsim.params(**params), {"password": PASSWORD})
            with pytest.raises(UnknownName, match=what):
                bad.create(request())
        # None of the refused builds left a VM behind.
        assert not [m for m in driver.inventory() if m.desktop_id]


def _properties(driver: VsphereCenter, machine_id: str, names: list[str]) -> dict[str, Any]:
    si = driver.vcenter.service()
    vm = inventory.find_vm(si, machine_id)
    assert vm is not None
    return inventory.properties_of(si, vm, names)


def _datastore_of(driver: VsphereCenter, machine_id: str) -> str:
    [store] = _properties(driver, machine_id, ["datastore"])["datastore"]
    return str(inventory.properties_of(driver.vcenter.service(), store, ["name"])["name"])


def test_datastore_choice(vcsim: Vcsim) -> None:
    def open_center(**params: Any) -> VsphereCenter:
        made = open_driver("vsphere", vcsim.params(**params), {"password": PASSWORD})
        assert isinstance(made, VsphereCenter)
        return made

    in_order = open_center(datastore_choice="fill_in_order", datastores=["LocalDS_1", "LocalDS_0"])
    most_free = open_center(datastore_choice="most_free")
    built = []
    try:
        first = in_order.create(request())
        built.append(first)
        assert _datastore_of(in_order, first) == "LocalDS_1"
        si = most_free.vcenter.service()
        dc = inventory.datacenter(si, None)
        free = {
            p["name"]: p["summary.freeSpace"]
            for _, p in inventory.collect(
                si, dc.datastoreFolder, vim.Datastore, ["name", "summary.freeSpace"]
            )
        }
        chosen = most_free.create(request())
        built.append(chosen)
        # Both sit on the test machine's disk: the most free of them when it was asked.
        assert free[_datastore_of(most_free, chosen)] >= min(free.values())
        # No datastore with the room asked for: a quota, the pool waits.
        full = open_center(min_free_gb=10**6 - 1)
        with pytest.raises(QuotaExceeded, match="GB free"):
            full.create(request())
    finally:
        for machine_id in built:
            in_order.terminate(MachineInfo(external_id=machine_id, name=machine_id))


def test_max_desktops_is_a_quota(vcsim: Vcsim) -> None:
    driver = open_driver("vsphere", vcsim.params(max_desktops=1), {"password": PASSWORD})
    first = driver.create(request())
    try:
        with pytest.raises(QuotaExceeded, match="max_desktops"):
            driver.create(request())
    finally:
        driver.terminate(MachineInfo(external_id=first, name=first))


def test_tls_is_verified_unless_a_global_admin_says_otherwise(
    vcsim: Vcsim, caplog: pytest.LogCaptureFixture
) -> None:
    unverified = {k: v for k, v in vcsim.params(timeout_s=5).items() if k != "ca_pem"}
    secret = f"pw-{uuid.uuid4().hex}"
    with pytest.raises(CenterError, match="TLS verification failed"):
        open_driver("vsphere", unverified, {"password": secret}).inventory()
    insecure = open_driver("vsphere", {**unverified, "insecure": True}, {"password": secret})
    assert insecure.inventory()
    # Switching verification off is the broker host's decision: a global admin's only.
    assert host_side_of(VsphereParams.model_validate({**unverified, "insecure": True})) == [
        "insecure"
    ]
    assert host_side_of(VsphereParams.model_validate(vcsim.params())) == []
    with pytest.raises(ValidationError, match="PEM"):
        VsphereParams.model_validate(vcsim.params(ca_pem="not a certificate"))
    broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(ValidationError, match="not a usable PEM"):
        VsphereParams.model_validate(vcsim.params(ca_pem=broken))
    assert secret not in caplog.text


def test_a_silent_vcenter_is_given_up_on_at_the_timeout() -> None:
    with tarpit() as pit:
        driver = open_driver(
            "vsphere",
            {"host": "127.0.0.1", "port": pit.port, "username": "u", "timeout_s": 1.0},
            {"password": "p"},
        )
        started = time.monotonic()
        with pytest.raises(CenterError, match="did not answer within 1 s"):
            driver.inventory()
        # Not a tight bound (a loaded machine): far from hanging for ever all the same.
        assert time.monotonic() - started < 30
    wait_until(lambda: VSPHERE_CALLS.live == 0, "the abandoned vCenter call to end")


def test_marks_round_trip_and_foreign_notes_are_not_marks() -> None:
    mark = marks.Marks(broker="deskbroker", metadata={"a": "x\ny"}, tags=("t1",))
    notes = marks.write(mark, "Owned by the Sales team")
    assert notes.startswith("Owned by the Sales team\n")
    assert marks.read(notes) == mark
    assert marks.read(marks.write(mark, notes)) == mark  # rewritten, not appended twice
    assert marks.write(mark, notes).count(marks.HEADER) == 1
    for foreign in [
        "",
        "just notes",
        f"{marks.HEADER}\nnot json",
        f"{marks.HEADER}\n[1]",
        f'{marks.HEADER}\n{{"broker": 1, "metadata": {{}}, "tags": []}}',
    ]:
        assert marks.read(foreign) is None


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[tuple[Vcsim, Path]]:
    """A simulator of its own that writes the SOAP traffic to a file: it does not act
    on a linked clone's disk backing or on a revert, so the tests read what was asked."""
    trace = tmp_path / "soap.log"
    with running("-vms", "1", "-templates", "2", "-trace", str(trace)) as sim:
        yield sim, trace


def _clone_requests(trace: Path) -> list[str]:
    """The bodies of the CloneVM_Task requests the simulator received, in order."""
    parts = re.split(r"^(Request|Response): ", trace.read_text(), flags=re.M)
    return [
        body
        for kind, body in zip(parts[1::2], parts[2::2], strict=True)
        if kind == "Request" and "<CloneVM_Task" in body
    ]


def test_linked_clone_of_a_snapshotted_template_else_full(
    traced: tuple[Vcsim, Path],
) -> None:
    sim, trace = traced

    def center(**params: Any) -> CenterDriver:
        return open_driver("vsphere", sim.params(**params), {"password": PASSWORD})

    auto = center()
    auto.create(request())  # template-0 has a snapshot: linked
    auto.create(request(template="template-1"))  # none: full
    center(clone="full").create(request())
    with pytest.raises(CenterError, match="has no snapshot"):
        center(clone="linked").create(request(template="template-1"))
    linked, full, forced_full = _clone_requests(trace)
    assert "createNewChildDiskBacking" in linked and "<snapshot" in linked
    for request_text in (full, forced_full):
        assert "createNewChildDiskBacking" not in request_text
        assert "<snapshot" not in request_text


def test_revert_to_snapshot(traced: tuple[Vcsim, Path]) -> None:
    sim, trace = traced
    driver = open_driver("vsphere", sim.params(), {"password": PASSWORD})
    assert isinstance(driver, VsphereCenter)
    machine_id = driver.create(request())
    machine = driver.machine(machine_id)
    assert machine is not None
    with pytest.raises(CenterError, match="no snapshot to revert to"):
        driver.revert_to_snapshot(machine)
    assert "RevertToCurrentSnapshot_Task" not in trace.read_text()
    vm = inventory.find_vm(driver.vcenter.service(), machine_id)
    vm.CreateSnapshot_Task("clean", "", False, False)
    wait_until(lambda: _properties(driver, machine_id, ["snapshot"]).get("snapshot"))
    driver.revert_to_snapshot(machine)
    assert "RevertToCurrentSnapshot_Task" in trace.read_text()


def test_capacity_faults_are_the_shared_quota_error(vcsim: Vcsim) -> None:
    """vCenter's ways of saying "no room" (which the simulator never says) become
    ``QuotaExceeded``, so the pool waits; any other fault is a ``CenterError``."""
    driver = open_driver("vsphere", vcsim.params(), {"password": PASSWORD})
    assert isinstance(driver, VsphereCenter)

    def answering(fault: Exception) -> Any:
        def work(si: Any) -> None:
            assert si.content.about.name  # a real session: the fault is vCenter's answer
            raise fault

        return work

    for fault in (
        vim.fault.InsufficientResourcesFault(msg="not enough CPU in the pool"),
        vim.fault.NoDiskSpace(msg="no space on ssd-01", datastore="ssd-01"),
    ):
        with pytest.raises(QuotaExceeded, match="has no room"):
            driver.vcenter.call(answering(fault), "clone")
    with pytest.raises(CenterError, match="clone: no permission") as raised:
        driver.vcenter.call(answering(vim.fault.NoPermission(msg="no permission")), "clone")
    assert not isinstance(raised.value, QuotaExceeded)

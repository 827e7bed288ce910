"""The libvirt center passes the conformance suite on libvirt's test driver."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from deskbroker import outbound
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
from deskbroker.centers.libvirt import LibvirtCenter
from deskbroker.centers.libvirt.connection import LIBVIRT_CALLS
from deskbroker.centers.libvirt.params import LibvirtParams
from deskbroker.centers.registry import open_driver, validate_params
from deskbroker.domain.states import PowerState
from deskbroker.errors import CenterError, InvalidInput
from deskbroker.outbound import DEFAULT_DENY, OutboundPolicy, OutboundRefused, host_side_of
from tests.centers.conformance import CenterConformance
from tests.centers.libvirt_node import center_params
from tests.helpers import wait_until


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[CenterDriver]:
    made = open_driver("libvirt", center_params(tmp_path), {})
    yield made
    assert isinstance(made, LibvirtCenter)
    made.hypervisor.close()


def _request(name: str = "vdi-001", **parameters: object) -> ProvisionRequest:
    return ProvisionRequest(
        name=name,
        metadata={
            CENTER_KEY: "center-1",
            DESKTOP_KEY: f"desktop-{name}",
            "deskbroker_task": "task-1",
            "deskbroker_enrol": "a-secret",
            "department": "R&D <lab>",
        },
        tags=(f"deskbroker-task-{name}",),
        parameters={"image": "win11-base.qcow2", "memory_mib": 1024, "vcpus": 1, **parameters},
    )


@pytest.fixture
def provision_request() -> ProvisionRequest:
    return _request()


class TestLibvirtCenter(CenterConformance):
    def test_a_desktop_is_a_qcow2_overlay_with_the_brokers_marks(
        self, driver: CenterDriver
    ) -> None:
        assert isinstance(driver, LibvirtCenter)
        machine_id = driver.create(_request(disk_gb=20))
        conn = driver.hypervisor.connection()
        dom = conn.lookupByUUIDString(machine_id)
        xml = dom.XMLDesc(0)
        # Metadata is escaped by the element tree, kept under the broker's namespace;
        # the agent's enrolment secret is not written into the host's domain XML.
        assert "R&amp;D &lt;lab&gt;" in xml and "a-secret" not in xml
        assert "https://deskbroker.dev/xmlns/libvirt/1" in xml
        volume = conn.storagePoolLookupByName("desktops").storageVolLookupByName("vdi-001.qcow2")
        described = volume.XMLDesc(0)
        assert "<backingStore>" in described
        assert "/var/lib/libvirt/desktops/win11-base.qcow2" in described
        assert str(20 * 1024**3) in described
        found = driver.machine(machine_id)
        assert found is not None
        assert found.attributes["meta.department"] == "R&D <lab>"
        assert found.desktop_id == "desktop-vdi-001"
        # The template is an image; the desktop's overlay is not.
        assert [i.name for i in driver.images()] == ["win11-base.qcow2"]
        assert driver.catalog()["networks"] == [{"id": "default", "name": "default"}]
        driver.terminate(found)
        assert driver.machine(machine_id) is None
        names = conn.storagePoolLookupByName("desktops").listVolumes()
        assert names == ["win11-base.qcow2"]  # the overlay went, the template stays
        driver.terminate(found)  # already gone: not an error

    def test_every_power_action_reaches_the_domain(self, driver: CenterDriver) -> None:
        machine_id = driver.create(_request())

        def state() -> PowerState:
            found = driver.machine(machine_id)
            assert found is not None
            return found.power_state

        machine = MachineInfo(external_id=machine_id, name="vdi-001")
        driver.power(machine, PowerAction.SUSPEND)
        assert state() is PowerState.SUSPENDED
        driver.power(machine, PowerAction.RESUME)
        assert state() is PowerState.RUNNING
        driver.power(machine, PowerAction.REBOOT)
        driver.power(machine, PowerAction.REBOOT_HARD)
        assert state() is PowerState.RUNNING
        driver.power(machine, PowerAction.SUSPEND)
        driver.power(machine, PowerAction.STOP)  # resumed first, so the guest hears it
        assert state() is PowerState.STOPPED
        driver.power(machine, PowerAction.STOP)  # already off: nothing to do
        with pytest.raises(CenterError, match="off: start it"):
            driver.power(machine, PowerAction.RESUME)
        driver.power(machine, PowerAction.START)
        assert state() is PowerState.RUNNING
        with pytest.raises(CenterError, match="is gone"):
            driver.power(MachineInfo(external_id="no-such", name="x"), PowerAction.START)

    def test_a_domain_the_broker_did_not_build_is_never_deleted(self, driver: CenterDriver) -> None:
        hand_made = next(m for m in driver.inventory() if m.name == "hand-made")
        assert hand_made.desktop_id == "" and hand_made.attributes["tags"] == ""
        assert hand_made not in driver.leaked(set(), center_id="center-1")
        with pytest.raises(CenterError, match="not built by this broker"):
            driver.terminate(hand_made)
        assert driver.machine(hand_made.external_id) is not None

    def test_unknown_names_and_bad_names_fail_the_build_at_once(self, driver: CenterDriver) -> None:
        with pytest.raises(UnknownName, match=r"image 'nope\.qcow2'"):
            driver.create(_request(image="nope.qcow2"))
        with pytest.raises(UnknownName, match="network 'lan9'"):
            driver.create(_request(network="lan9"))
        with pytest.raises(CenterError, match="not a usable libvirt domain name"):
            driver.create(_request(name="../../etc/x"))
        with pytest.raises(ValidationError):
            driver.create(_request(image="a/b"))
        driver.create(_request())
        with pytest.raises(CenterError, match="already exists"):
            driver.create(_request())
        # The failed second build left no volume of its own behind either.
        assert isinstance(driver, LibvirtCenter)
        pool = driver.hypervisor.connection().storagePoolLookupByName("desktops")
        assert sorted(pool.listVolumes()) == ["vdi-001.qcow2", "win11-base.qcow2"]


def test_max_desktops_is_a_quota(tmp_path: Path) -> None:
    driver = open_driver("libvirt", center_params(tmp_path, max_desktops=1), {})
    driver.create(_request("vdi-001"))
    with pytest.raises(QuotaExceeded, match="max_desktops"):
        driver.create(_request("vdi-002"))
    assert "vdi-002" not in {m.name for m in driver.inventory()}


def test_uris_that_reach_the_broker_host_are_for_global_admins() -> None:
    def host_side(uri: str) -> str:
        params = LibvirtParams.model_validate({"uri": uri})
        assert host_side_of(params) == (["host_side_uri"] if params.host_side_uri else [])
        return params.host_side_uri

    assert host_side("qemu+tcp://kvm1.example.org/system") == ""
    for local in (
        "qemu:///system",
        "qemu+ssh://root@kvm1.example.org/system",
        "qemu+tls://kvm1.example.org/system",
        "qemu+tcp://kvm1.example.org/system?keyfile=/root/.ssh/id_rsa",
        "test:///etc/passwd",
    ):
        assert host_side(local) == local
    for bad in ("qemu+ext:///system?command=/bin/sh", "lxc:///", "qemu:///system x", "nope"):
        with pytest.raises(InvalidInput, match="params: uri"):
            validate_params("libvirt", {"uri": bad})
    target = LibvirtParams.model_validate({"uri": "xen+tcp://10.1.2.3:16509/system"})
    assert [(t.param, t.host) for t in target.outbound_targets()] == [("uri", "10.1.2.3")]


def test_a_remote_host_the_policy_denies_is_never_connected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The broker's default policy: loopback denied (the tests' own allows it).
    monkeypatch.setattr(outbound, "_current", OutboundPolicy.from_text("", DEFAULT_DENY))
    driver = open_driver("libvirt", {"uri": "qemu+tcp://127.0.0.1:1/system", "timeout_s": 5}, {})
    with pytest.raises(OutboundRefused, match=r"libvirt host 127\.0\.0\.1"):
        driver.inventory()


def test_a_full_storage_pool_is_a_quota(tmp_path: Path) -> None:
    # The test driver's pools hold 100 GiB, allocated in full by each volume.
    driver = open_driver("libvirt", center_params(tmp_path), {})
    driver.create(_request("vdi-001", disk_gb=80))
    with pytest.raises(QuotaExceeded, match="storage pool 'desktops' has no room"):
        driver.create(_request("vdi-002", disk_gb=80))
    assert "vdi-002" not in {m.name for m in driver.inventory()}


def test_a_host_that_never_answers_is_given_up_on_at_the_deadline() -> None:
    # A libvirt "host" that accepts the connection and then says nothing: libvirt's own
    # call would wait for its handshake for ever; the driver's deadline ends the wait.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        driver = open_driver(
            "libvirt", {"uri": f"qemu+tcp://127.0.0.1:{port}/system", "timeout_s": 1}, {}
        )
        started = time.monotonic()
        with pytest.raises(CenterError, match="did not answer within 1 s"):
            driver.inventory()
        # Given up on at the deadline, not at some library timeout (generous bound for a
        # loaded machine: the point is that it ends).
        assert time.monotonic() - started < 30
        accepted, _ = silent.accept()
        accepted.close()  # the helper left waiting sees the end and finishes
    wait_until(lambda: LIBVIRT_CALLS.live == 0, "the abandoned libvirt call to end")

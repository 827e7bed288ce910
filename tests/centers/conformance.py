"""One conformance suite that every center driver passes.

A driver's test module subclasses ``CenterConformance`` and provides the ``driver``
fixture (plus ``provision_request`` when the driver can provision).
"""

from __future__ import annotations

import socket

import pytest

from deskbroker.centers.base import (
    CENTER_KEY,
    DESKTOP_KEY,
    BuildLimits,
    Capability,
    CenterDriver,
    MachineInfo,
    PowerAction,
    ProvisionRequest,
)
from deskbroker.centers.registry import contract_faults, drivers
from deskbroker.domain.states import PowerState
from deskbroker.errors import CenterError
from tests.helpers import wait_until


def _attached(driver: CenterDriver, machine_id: str, volume_id: str) -> bool:
    try:
        driver.attach_volume(machine_id, volume_id)
    except CenterError:
        return False
    return True


class CenterConformance:
    """The contract of ``deskbroker.centers.base.CenterDriver``."""

    def test_registered_through_entry_points(self, driver: CenterDriver) -> None:
        assert drivers()[driver.kind] is type(driver)

    def test_keeps_the_contract_of_its_capabilities(self, driver: CenterDriver) -> None:
        assert contract_faults(type(driver)) == []
        assert isinstance(driver.params, type(driver).Params)

    def test_images_only_where_it_can_provision(self, driver: CenterDriver) -> None:
        images = driver.images()
        if Capability.IMAGES not in driver.capabilities:
            assert images == []
        for image in images:
            assert image.external_id and image.name
        catalog = driver.catalog()
        pickers = {"images", "flavors", "networks", "availability_zones", "security_groups"}
        assert pickers <= set(catalog)
        assert {i["id"] for i in catalog["images"]} == {i.external_id for i in images}

    def test_changes_from_nothing_list_everything(self, driver: CenterDriver) -> None:
        first = driver.changes(None)
        assert {m.external_id for m in first.machines} == {
            m.external_id for m in driver.inventory()
        }
        assert first.gone == []
        if Capability.CHANGES in driver.capabilities:
            # A driver that lists changes gives a cursor to list from next time, and
            # what changed since is among what it has.
            assert first.cursor is not None
            since = driver.changes(first.cursor)
            assert {m.external_id for m in since.machines} <= {
                m.external_id for m in first.machines
            }

    def test_inventory_reports_unique_machines(self, driver: CenterDriver) -> None:
        machines = driver.inventory()
        ids = [m.external_id for m in machines]
        assert len(ids) == len(set(ids))
        for m in machines:
            assert isinstance(m.power_state, PowerState)
            assert m.name

    def test_machine_lookup_matches_inventory(self, driver: CenterDriver) -> None:
        machines = driver.inventory()
        if not machines:
            pytest.fail("the fixture must give the center at least one machine")
        found = driver.machine(machines[0].external_id)
        assert found is not None and found.external_id == machines[0].external_id
        assert driver.machine("no-such-machine-0000") is None

    def test_missing_capabilities_refuse_clearly(self, driver: CenterDriver) -> None:
        machine = MachineInfo(external_id="x", name="x")
        if Capability.POWER not in driver.capabilities:
            with pytest.raises(CenterError, match="cannot power"):
                driver.power(machine, PowerAction.START)
        if Capability.PROVISION not in driver.capabilities:
            with pytest.raises(CenterError, match="cannot provision"):
                driver.create(ProvisionRequest(name="x"))
        if Capability.TERMINATE not in driver.capabilities:
            with pytest.raises(CenterError, match="cannot terminate"):
                driver.terminate(machine)
        if Capability.LEAK_SWEEP not in driver.capabilities:
            with pytest.raises(CenterError, match="cannot leak_sweep"):
                driver.leaked(set(), center_id="c")
            with pytest.raises(CenterError, match="cannot leak_sweep"):
                driver.find_tagged("x")
        if Capability.VOLUMES not in driver.capabilities:
            with pytest.raises(CenterError, match="cannot volumes"):
                driver.create_volume("x", 1, {})
        if Capability.REBUILD not in driver.capabilities:
            with pytest.raises(CenterError, match="cannot rebuild"):
                driver.rebuild(machine, "x")

    def test_limits_are_declared(self, driver: CenterDriver) -> None:
        limits = driver.limits()
        assert isinstance(limits, BuildLimits)
        assert limits.max_in_flight >= 1 and limits.build_timeout_s > 0

    def test_probe_tells_open_from_closed(self, driver: CenterDriver) -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
            assert driver.probe("127.0.0.1", port).reachable
        closed = driver.probe("127.0.0.1", port, timeout_s=0.5)
        assert not closed.reachable and "not reachable" in closed.message
        assert not driver.probe("", 22).reachable

    def test_provision_power_terminate(
        self, driver: CenterDriver, provision_request: ProvisionRequest | None
    ) -> None:
        if Capability.PROVISION not in driver.capabilities:
            assert provision_request is None
            return
        assert provision_request is not None
        machine_id = driver.create(provision_request)
        running = wait_until(
            lambda: (
                (m := driver.machine(machine_id)) is not None
                and m.power_state is PowerState.RUNNING
                and m
            )
        )
        assert isinstance(running, MachineInfo)
        # The desktop the engine built it for comes back typed, and it is no fault.
        assert running.desktop_id == provision_request.metadata.get(DESKTOP_KEY, "")
        assert running.desktop_id and not running.fault and not running.gone
        assert driver.attach_address(machine_id, provision_request)
        driver.power(running, PowerAction.STOP)
        wait_until(
            lambda: (
                (m := driver.machine(machine_id)) is not None
                and m.power_state is PowerState.STOPPED
            )
        )
        driver.power(running, PowerAction.START)
        wait_until(
            lambda: (
                (m := driver.machine(machine_id)) is not None
                and m.power_state is PowerState.RUNNING
            )
        )
        for tag in provision_request.tags:
            assert machine_id in {m.external_id for m in driver.find_tagged(tag)}
        if Capability.REBUILD in driver.capabilities:
            # From its own image (by id, as inventory reports it): the same machine comes
            # back running on the image the rebuild named.
            current = str(running.attributes.get("image") or "")
            image = driver.rebuild(running, current)
            assert image == current
            wait_until(
                lambda: (
                    (m := driver.machine(machine_id)) is not None
                    and m.power_state is PowerState.RUNNING
                    and m.attributes.get("image") == image
                    and not m.driver_state.get("task_state")
                )
            )
        if Capability.VOLUMES in driver.capabilities:
            volume = driver.create_volume(f"{provision_request.name}-data", 1, {})
            assert volume
            # A new volume may take a moment to be ready: the engine tries again, so here.
            wait_until(lambda: _attached(driver, machine_id, volume))
            driver.detach_volume(machine_id, volume)
            driver.detach_volume(machine_id, volume)  # already detached: not an error
        # The engine marks each build with its center; the sweep takes only its own.
        center_id = provision_request.metadata[CENTER_KEY]
        assert machine_id in {m.external_id for m in driver.leaked(set(), center_id=center_id)}
        assert machine_id not in {
            m.external_id for m in driver.leaked({machine_id}, center_id=center_id)
        }
        assert machine_id not in {
            m.external_id for m in driver.leaked(set(), center_id=center_id + "-other")
        }
        driver.terminate(running)
        wait_until(lambda: driver.machine(machine_id) is None)

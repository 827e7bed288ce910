"""One conformance suite that every center driver passes.

A driver's test module subclasses ``CenterConformance`` and provides the ``driver``
fixture (plus ``provision_request`` when the driver can provision).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from deskbroker.centers.base import (
    CENTER_KEY,
    Capability,
    CenterDriver,
    MachineInfo,
    PowerAction,
    ProvisionRequest,
)
from deskbroker.centers.registry import drivers
from deskbroker.domain.states import PowerState
from deskbroker.errors import CenterError


def wait_until(
    check: Callable[[], MachineInfo | bool | None], timeout_s: float = 20.0
) -> MachineInfo | bool | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


class CenterConformance:
    """The contract of ``deskbroker.centers.base.CenterDriver``."""

    def test_registered_through_entry_points(self, driver: CenterDriver) -> None:
        assert drivers()[driver.kind] is type(driver)

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

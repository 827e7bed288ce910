"""The static center: physical or uncategorised machines registered by name and address.

A machine may carry power control: ``wake_on_lan`` (a magic packet to a broadcast
address; with ``check_port`` the scan tells on from off by a TCP connect) and
``redfish`` (its BMC: power state and ``ComputerSystem.Reset``). A center with any of
them can power (``supports``); its listing then reaches the network (a BMC, a port), so
it is scanned by the engine like a cloud's, never inside a database write.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deskbroker.centers.base import Capability, CenterDriver, MachineInfo, PowerAction
from deskbroker.centers.openstack.overdue import MAX_PER_OWNER
from deskbroker.centers.static import wol
from deskbroker.centers.static.redfish import NotAsked, RedfishBMC, RedfishConfig
from deskbroker.domain.membership import ENGINE_PREFIX
from deskbroker.domain.states import PowerState
from deskbroker.errors import CenterError
from deskbroker.outbound import Target
from deskbroker.protocols.descriptors import usable_host

# What each action asks of a BMC, best first; a BMC that lists its allowed reset types
# gets the first it allows (ForceOff where a graceful shutdown is not offered).
_RESETS: dict[PowerAction, tuple[str, ...]] = {
    PowerAction.START: ("On",),
    PowerAction.STOP: ("GracefulShutdown", "ForceOff"),
    PowerAction.REBOOT: ("GracefulRestart", "ForceRestart"),
    PowerAction.REBOOT_HARD: ("ForceRestart", "PowerCycle"),
}
# Nothing to do when the system already is so.
_ALREADY = {PowerAction.START: "On", PowerAction.STOP: "Off"}
# BMCs asked at once by one listing (``inventory``).
LOOKS_AT_ONCE = MAX_PER_OWNER // 2
_OFFLINE = frozenset({"inventory", "changes", "images", "catalog", "machine", "attach_address"})


class WakeOnLan(BaseModel):
    """How to wake a machine: its MAC, and where the magic packet goes."""

    model_config = ConfigDict(extra="forbid")
    mac: str = Field(pattern=wol.MAC)
    broadcast: str = Field(
        default="255.255.255.255", description="the broadcast address of the machine's subnet"
    )
    port: int = Field(default=9, ge=1, le=65535)
    check_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="a TCP port that answers while the machine is on (its power state)",
    )

    @field_validator("broadcast")
    @classmethod
    def _an_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
        return value


class StaticMachine(BaseModel):
    """One registered machine; ``ports`` override the protocol defaults."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    address: str = Field(min_length=1, max_length=255)
    hostname: str = Field(default="", max_length=255)
    os: str = Field(default="", max_length=100)
    ports: dict[str, int] = Field(default_factory=dict)
    attributes: dict[str, Any] = Field(default_factory=dict)
    wake_on_lan: WakeOnLan | None = None
    redfish: RedfishConfig | None = None

    @field_validator("attributes")
    @classmethod
    def _not_the_engines(cls, attributes: dict[str, Any]) -> dict[str, Any]:
        # ``meta.deskbroker_*`` say which pool built a desktop: the engine's to write, or
        # a machine named here could join a pool its writer may not change.
        for key in attributes:
            if key.startswith(ENGINE_PREFIX):
                raise ValueError(
                    f"attribute {key!r} is the broker's own (the pool that built a "
                    f"desktop); a machine's attributes cannot start with {ENGINE_PREFIX!r}"
                )
        return attributes

    @property
    def powered(self) -> bool:
        return self.wake_on_lan is not None or self.redfish is not None

    @property
    def observed(self) -> bool:
        """Whether its power state is read from the network (else it is assumed on)."""
        return self.redfish is not None or (
            self.wake_on_lan is not None and self.wake_on_lan.check_port is not None
        )


class StaticParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    machines: list[StaticMachine] = Field(default_factory=list, max_length=10000)

    @field_validator("machines")
    @classmethod
    def _one_name_each(cls, machines: list[StaticMachine]) -> list[StaticMachine]:
        # The name is the machine's identity in the center: two of one name would be one
        # desktop flapping between two addresses.
        seen: set[str] = set()
        for machine in machines:
            if machine.name in seen:
                raise ValueError(f"two machines are named {machine.name!r}; names must differ")
            seen.add(machine.name)
        return machines

    @field_validator("machines")
    @classmethod
    def _usable_addresses(cls, machines: list[StaticMachine]) -> list[StaticMachine]:
        for machine in machines:
            if not usable_host(machine.address):
                raise ValueError(
                    f"machine {machine.name!r}: address {machine.address!r} is neither an IP "
                    "address nor a host name"
                )
        return machines

    def outbound_targets(self) -> list[Target]:
        """The BMCs, the Wake-on-LAN broadcast addresses and the machines' own addresses,
        checked by the policy. A machine's address is given none of the center's secrets
        (``carries_secret=False``): adding or moving one keeps the BMC passwords."""
        found = []
        for i, m in enumerate(self.machines):
            # Probes, the power check port and the gateway connect here: an address the
            # policy denies is refused when it is saved, not only when a user connects.
            param = f"machines.{i}.address (machine {m.name!r})"
            found.append(Target(param, m.address, m.address, carries_secret=False))
            if m.redfish is not None:
                url = str(m.redfish.url)
                found.append(Target.url(f"machines.{i}.redfish.url", url))
            if m.wake_on_lan is not None:
                where = m.wake_on_lan.broadcast
                found.append(Target(f"machines.{i}.wake_on_lan.broadcast", where, where))
        return found


class StaticCenter(CenterDriver):
    """Machines the broker hands out and probes, and powers where they say how."""

    kind: ClassVar[str] = "static"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.INVENTORY, Capability.PROBE}
    )
    Params: ClassVar[type[BaseModel]] = StaticParams
    # The listing is the center's own params: reading it reaches no host (a probe does),
    # unless a machine's power state is read from its BMC or a port (see __init__).
    offline: ClassVar[frozenset[str]] = _OFFLINE
    # Which machines there are is the params' word, even when their power state is read
    # from a BMC or a port.
    listing_is_own: ClassVar[bool] = True

    def __init__(self, params: Mapping[str, Any], secrets: Mapping[str, str]) -> None:
        super().__init__(params, secrets)
        assert isinstance(self.params, StaticParams)
        self.static_params: StaticParams = self.params
        self.machines = {m.name: m for m in self.static_params.machines}
        if any(m.observed for m in self.static_params.machines):
            # The write guard reads ``offline`` from the instance: this center's listing
            # reaches the network, so the engine scans it outside any write.
            setattr(self, "offline", _OFFLINE - {"inventory", "changes", "machine"})  # noqa: B010

    def supports(self, capability: Capability) -> bool:
        """Power, when any machine has Wake-on-LAN or a Redfish BMC."""
        if capability is Capability.POWER:
            return any(m.powered for m in self.static_params.machines)
        return super().supports(capability)

    def inventory(self) -> list[MachineInfo]:
        machines = self.static_params.machines
        observed = [m for m in machines if m.observed]
        states: dict[str, PowerState | None] = {}
        if observed:
            # Each look is bounded by its own timeout; a few at once, so a listing of
            # many machines with dead BMCs still ends. Half the tenant's share of the
            # BMC helpers: two of its centers scanning at once both get every answer.
            at_once = max(1, min(LOOKS_AT_ONCE, len(observed)))
            with ThreadPoolExecutor(max_workers=at_once) as looks:
                states = dict(
                    zip((m.name for m in observed), looks.map(self._state, observed), strict=True)
                )
        return [
            MachineInfo(
                external_id=m.name,
                name=m.name,
                address=m.address,
                hostname=m.hostname or m.name,
                os=m.os,
                # Without a way to look, a physical machine is assumed on; the probe
                # tells whether it answers.
                power_state=states.get(m.name, PowerState.RUNNING) or PowerState.UNKNOWN,
                attributes={
                    **m.attributes,
                    **({"ports": m.ports} if m.ports else {}),
                    **({"power_control": _control(m)} if m.powered else {}),
                },
                # Its BMC not asked this time: seen, and what the broker knew stands.
                partial=m.name in states and states[m.name] is None,
            )
            for m in machines
        ]

    def _state(self, machine: StaticMachine) -> PowerState | None:
        """The machine's power state; None when its BMC was not asked (no helper left in
        the tenant's share: its other centers' scans hold them), which is no news."""
        if machine.redfish is not None:
            try:
                return self._bmc(machine).power_state()
            except NotAsked:
                return None
            except CenterError:
                return PowerState.UNKNOWN  # the scan goes on; a power action says why
        assert machine.wake_on_lan is not None and machine.wake_on_lan.check_port is not None
        answered = self.probe(machine.address, machine.wake_on_lan.check_port, timeout_s=1.0)
        return PowerState.RUNNING if answered.reachable else PowerState.STOPPED

    def _bmc(self, machine: StaticMachine) -> RedfishBMC:
        assert machine.redfish is not None
        password = self.secrets.get(machine.redfish.password_secret, "")
        if not password:
            raise CenterError(
                f"machine {machine.name}: the center secret "
                f"{machine.redfish.password_secret!r} (its BMC password) is not set"
            )
        # Under the center's tenant: its BMCs' conversations count against its share.
        return RedfishBMC(machine.redfish, password, machine.name, self.tenant_id)

    def power(self, machine: MachineInfo, action: PowerAction) -> None:
        """Redfish where the machine has a BMC; otherwise Wake-on-LAN, which can only
        start it. Does not wait for the machine: scans see the result."""
        found = self.machines.get(machine.external_id)
        if found is None or not found.powered:
            raise CenterError(
                f"a static center cannot power {machine.name}: it has no Wake-on-LAN or "
                "Redfish settings"
            )
        if found.redfish is not None:
            resets = _RESETS.get(action)
            if resets is None:
                raise CenterError(
                    f"a physical machine cannot {action.value} through its BMC ({found.name})"
                )
            self._bmc(found).reset(resets, unless=_ALREADY.get(action))
            return
        assert found.wake_on_lan is not None
        if action is not PowerAction.START:
            raise CenterError(
                f"machine {found.name} has only Wake-on-LAN: it can be started, not "
                f"{action.value}ed; give it a Redfish BMC for that"
            )
        target = found.wake_on_lan
        try:
            wol.wake(target.mac, target.broadcast, target.port, f"machine {found.name}")
        except OSError as exc:
            raise CenterError(
                f"the Wake-on-LAN packet for {found.name} could not be sent to "
                f"{target.broadcast}:{target.port}: {exc.strerror or exc}"
            ) from exc


def _control(machine: StaticMachine) -> str:
    return "+".join(
        name
        for name, there in (("redfish", machine.redfish), ("wake_on_lan", machine.wake_on_lan))
        if there is not None
    )

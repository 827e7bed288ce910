"""The static center: physical or uncategorised machines registered by name and address."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deskbroker.centers.base import Capability, CenterDriver, MachineInfo
from deskbroker.domain.states import PowerState
from deskbroker.protocols.descriptors import usable_host


class StaticMachine(BaseModel):
    """One registered machine; ``ports`` override the protocol defaults."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    address: str = Field(min_length=1, max_length=255)
    hostname: str = Field(default="", max_length=255)
    os: str = Field(default="", max_length=100)
    ports: dict[str, int] = Field(default_factory=dict)
    attributes: dict[str, Any] = Field(default_factory=dict)


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


class StaticCenter(CenterDriver):
    """Machines the broker cannot power or create, only hand out and probe."""

    kind: ClassVar[str] = "static"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.INVENTORY, Capability.PROBE}
    )
    Params: ClassVar[type[BaseModel]] = StaticParams
    # The listing is the center's own params: reading it reaches no host. (A probe does.)
    offline: ClassVar[frozenset[str]] = frozenset(
        {"inventory", "changes", "images", "catalog", "machine", "attach_address"}
    )

    def inventory(self) -> list[MachineInfo]:
        params = self.params
        assert isinstance(params, StaticParams)
        return [
            MachineInfo(
                external_id=m.name,
                name=m.name,
                address=m.address,
                hostname=m.hostname or m.name,
                os=m.os,
                # A physical machine is assumed on; the probe tells whether it answers.
                power_state=PowerState.RUNNING,
                attributes={**m.attributes, **({"ports": m.ports} if m.ports else {})},
            )
            for m in params.machines
        ]

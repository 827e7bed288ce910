"""The center seam: what the broker asks of any infrastructure.

A driver implements:

- ``inventory()``: every machine the center has, as ``MachineInfo``.
- ``images()``: what the center can provision from (empty without ``Capability.PROVISION``).
- ``provision(request)``, ``power(machine, action)``, ``terminate(machine)``,
  ``leaked(known_ids, center_id=...)``: only when the matching capability is in ``capabilities``.
- ``probe(machine, port)``: is the machine reachable on a protocol port.

Drivers are registered through the ``deskbroker.centers`` entry-point group. Blocking
driver calls are run off the event loop by the caller. ``driver_state`` is an opaque JSON
dict per desktop so drivers never need migrations.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel

from deskbroker import outbound

# PowerAction is the power state machine's (domain/states.py); drivers name it from here.
from deskbroker.domain.states import PowerAction as PowerAction
from deskbroker.domain.states import PowerState
from deskbroker.errors import CenterError
from deskbroker.write_guard import guard_methods


class Capability(StrEnum):
    INVENTORY = "inventory"
    IMAGES = "images"
    PROVISION = "provision"
    POWER = "power"
    TERMINATE = "terminate"
    LEAK_SWEEP = "leak_sweep"
    PROBE = "probe"
    CHANGES = "changes"
    VOLUMES = "volumes"
    # Give a machine a fresh system disk from an image, keeping its identity, address
    # and attached volumes (OpenStack's rebuild). Without it a rollout replaces machines.
    REBUILD = "rebuild"


class UnknownName(CenterError):
    """A provisioning parameter names a flavor, image or network the center does not
    have: trying again cannot help until the pool or the center changes."""

    status = 422
    title = "Unknown name"

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name!r} not found")
        self.kind = kind
        self.name = name

    def where(self, center: str) -> str:
        """The message with the center named, e.g. "flavor 'm1.huge' not found in center X"."""
        return f"{self.kind} {self.name!r} not found in center {center}"


class QuotaExceeded(CenterError):
    """The center has no room for what a build asked (instances, cores, addresses):
    the same request may succeed later, so the engine backs the pool off instead of
    failing the build. Every driver raises this one, whatever its cloud calls it."""

    status = 409
    title = "Quota exceeded"


# The metadata keys the engine gives every machine it asks for: a driver stores them
# with the machine and reports them back as ``MachineInfo.desktop_id``.
DESKTOP_KEY = "deskbroker_desktop"
POOL_KEY = "deskbroker_pool"


@dataclass(frozen=True)
class BuildLimits:
    """What a center can take: how many builds at once, and how long one may take
    before the engine gives up on it."""

    max_in_flight: int = 20
    build_timeout_s: float = 900.0


@dataclass(frozen=True)
class MachineInfo:
    """One machine as the center reports it.

    ``attributes`` are shown to administrators and matched by pool filters; what the
    broker itself acts on is a typed field: ``fault`` (why the center put it in ERROR),
    ``desktop_id`` (the desktop it was built for, from ``DESKTOP_KEY`` in the request's
    metadata; empty for a machine the broker did not build), ``gone`` (the center no
    longer has it) and ``partial``: the center vouches that the machine exists but not
    what it is (e.g. a cloud cell that does not answer), so its other fields are no
    news and must not overwrite what the broker knows."""

    external_id: str
    name: str
    address: str = ""
    hostname: str = ""
    os: str = ""
    power_state: PowerState = PowerState.UNKNOWN
    attributes: Mapping[str, Any] = field(default_factory=dict)
    driver_state: Mapping[str, Any] = field(default_factory=dict)
    fault: str = ""
    desktop_id: str = ""
    gone: bool = False
    partial: bool = False


@dataclass(frozen=True)
class Changes:
    """What a center reports since a cursor; ``cursor`` is where the next look starts,
    in the center's own clock."""

    machines: list[MachineInfo]
    gone: list[str]
    cursor: str | None


@dataclass(frozen=True)
class ImageInfo:
    external_id: str
    name: str
    os: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)


# Metadata naming the center whose build made a machine. Several centers may share one
# cloud project (and broker tag): a leak sweep takes only what its own center built.
CENTER_KEY = "deskbroker_center"


@dataclass(frozen=True)
class ProvisionRequest:
    """A new desktop as the broker asks for it: its name, the broker's own parameters
    (user data, metadata, tags, a data volume) and the pool's parameters as stored. What
    to build it from (an image, a size, a network...) is the center's own business: a
    driver reads it with ``CenterDriver.provision_params``."""

    name: str
    user_data: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Identify broker, pool and desktop so a leak sweep can find what we made.
    tags: tuple[str, ...] = ()
    data_volume_gb: int | None = None
    data_volume_id: str | None = None
    # The pool's provisioning parameters as stored (the broker's and the center's):
    # a driver reads its own with ``CenterDriver.provision_params``.
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeResult:
    reachable: bool
    latency_ms: float | None
    message: str


# The seam's calls that may reach the center: none may run inside a database write unit.
OUTBOUND_CALLS = (
    "inventory",
    "changes",
    "images",
    "catalog",
    "create",
    "machine",
    "attach_address",
    "power",
    "terminate",
    "leaked",
    "find_tagged",
    "create_volume",
    "attach_volume",
    "detach_volume",
    "rebuild",
    "probe",
)


class CenterDriver:
    """Base of every center driver; see the module docstring for the contract.

    Every call in ``OUTBOUND_CALLS`` refuses to run inside a database write unit
    (``deskbroker.write_guard``); a driver names in ``offline`` those of its calls that
    do no I/O at all (a static center's listing is its own params).
    """

    kind: ClassVar[str] = ""
    offline: ClassVar[frozenset[str]] = frozenset()
    # The listing is the operator's own word (a static center's params), not a remote's
    # answer: a machine it leaves out is gone at once. A remote's full listing must miss
    # a machine twice before its desktop goes (it may page, filter or half-answer).
    listing_is_own: ClassVar[bool] = False
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    # Pydantic model validating the center's ``params``; secrets are separate.
    Params: ClassVar[type[BaseModel]]
    # Pydantic model of what a pool may set for the machines this center builds (image,
    # size, network...), beside the broker's own provisioning parameters; a driver with
    # ``Capability.PROVISION`` must set it. The pool's API checks them with it.
    ProvisionParams: ClassVar[type[BaseModel] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        guard_methods(cls, OUTBOUND_CALLS)

    def __init__(self, params: Mapping[str, Any], secrets: Mapping[str, str]) -> None:
        self.params = self.Params.model_validate(dict(params))
        self.secrets = dict(secrets)
        self.tenant_id = ""

    def belongs_to(self, tenant_id: str) -> None:
        """The tenant whose center this driver talks to (the broker's driver cache says
        so once it opens it). A driver that caps the calls left hanging on its remotes
        per tenant (OpenStack, AWS, libvirt, vSphere and the static center's Redfish
        BMCs: ``overdue.MAX_PER_OWNER``) counts them under it, so one tenant's silent or
        dripping remotes cannot take every tenant's places."""
        self.tenant_id = tenant_id

    def limits(self) -> BuildLimits:
        """How many builds the center takes at once and how long one may take; a
        driver whose params let an administrator set them overrides this."""
        return BuildLimits()

    def supports(self, capability: Capability) -> bool:
        return capability in self.capabilities

    def require(self, capability: Capability) -> None:
        if capability not in self.capabilities:
            raise CenterError(f"a {self.kind} center cannot {capability.value}")

    def inventory(self) -> list[MachineInfo]:
        """Every machine the center knows of."""
        self.require(Capability.INVENTORY)
        return []

    def changes(self, since: str | None) -> Changes:
        """Machines changed since ``since`` (everything when ``None``) and those gone.
        Drivers with ``Capability.CHANGES`` list only what changed; others list all."""
        return Changes(self.inventory(), [], None)

    def images(self) -> list[ImageInfo]:
        """What the center can provision from; empty when it cannot provision."""
        return []

    def catalog(self) -> dict[str, list[dict[str, Any]]]:
        """What the admin's pickers offer: images, flavors, networks, zones, groups."""
        return {
            "images": [{"id": i.external_id, "name": i.name, "os": i.os} for i in self.images()],
            "flavors": [],
            "networks": [],
            "availability_zones": [],
            "security_groups": [],
        }

    def provision_params(self, request: ProvisionRequest) -> BaseModel:
        """The center's part of the request's pool parameters, as ``ProvisionParams``."""
        self.require(Capability.PROVISION)
        model = self.ProvisionParams
        if model is None:
            raise CenterError(f"a {self.kind} center declares no provisioning parameters")
        own = {k: v for k, v in request.parameters.items() if k in model.model_fields}
        return model.model_validate(own)

    def create(self, request: ProvisionRequest) -> str:
        """Ask the center for a new machine; returns its id at once, without waiting."""
        self.require(Capability.PROVISION)
        return ""

    def needs_address(self, request: ProvisionRequest) -> bool:
        """Whether a machine built for ``request`` needs ``attach_address`` once it runs
        (OpenStack: a floating IP the pool asked for). The engine then takes an
        addressing step before it hands the desktop over; otherwise the address the
        listing reports is the desktop's. Answered from the request alone: no I/O."""
        return False

    def machine(self, external_id: str) -> MachineInfo | None:
        """One machine's current state; ``None`` once it is gone."""
        return next((m for m in self.inventory() if m.external_id == external_id), None)

    def attach_address(self, external_id: str, request: ProvisionRequest) -> str:
        """Give a new machine its reachable address (asked when ``needs_address``)."""
        found = self.machine(external_id)
        return found.address if found else ""

    def power(self, machine: MachineInfo, action: PowerAction) -> None:
        """Ask the center to change a machine's power state."""
        self.require(Capability.POWER)

    def terminate(self, machine: MachineInfo) -> None:
        """Destroy a machine the broker created."""
        self.require(Capability.TERMINATE)

    def leaked(self, known_external_ids: set[str], *, center_id: str) -> list[MachineInfo]:
        """Machines that center ``center_id`` built (tagged as this broker's, with
        ``CENTER_KEY`` naming that center on the machine itself) and no longer knows. A
        machine without that mark is never a leak: another center, or a person, owns it."""
        self.require(Capability.LEAK_SWEEP)
        return []

    def find_tagged(self, tag: str) -> list[MachineInfo]:
        """Machines carrying ``tag``: how a resumed build finds the instance it asked for."""
        self.require(Capability.LEAK_SWEEP)
        return []

    def create_volume(self, name: str, size_gb: int, metadata: Mapping[str, str]) -> str:
        """A data volume; returns its id."""
        self.require(Capability.VOLUMES)
        return ""

    def attach_volume(self, external_id: str, volume_id: str) -> None:
        """Attach a data volume to a machine."""
        self.require(Capability.VOLUMES)

    def detach_volume(self, external_id: str, volume_id: str) -> None:
        """Detach a data volume; a machine or attachment already gone is not an error."""
        self.require(Capability.VOLUMES)

    def rebuild(self, machine: MachineInfo, image: str) -> str:
        """Rebuild a machine from ``image`` (an id or a name); returns at once with the
        image's id, the build itself is watched through ``machine``. ``UnknownName`` when
        the center has no such image."""
        self.require(Capability.REBUILD)
        return ""

    def probe(self, address: str, port: int, timeout_s: float = 1.0) -> ProbeResult:
        """Open a TCP connection to a protocol port: the honest reachability test."""
        if not address:
            return ProbeResult(False, None, "the desktop has no address")
        started = time.perf_counter()
        try:
            # An administrator wrote the address: no probe of the broker's own host or of
            # the metadata service (an open or closed port would be an answer). Only the
            # very address checked is connected to.
            found = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
            family, kind, proto, _, target = found[0]
            reason = outbound.current().refusal(str(target[0]))
            if reason is not None:
                return ProbeResult(False, None, f"{address}:{port} is not probed: {reason}")
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout_s)
                sock.connect(target)
        except OSError as exc:
            return ProbeResult(False, None, f"{address}:{port} is not reachable: {exc}")
        latency = (time.perf_counter() - started) * 1000
        return ProbeResult(True, round(latency, 2), f"{address}:{port} accepted a connection")


guard_methods(CenterDriver, OUTBOUND_CALLS)

"""Center drivers found through the ``deskbroker.centers`` entry-point group."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from deskbroker.centers.base import Capability, CenterDriver
from deskbroker.errors import InvalidInput

# What each capability needs the driver to implement itself: the base's versions only
# refuse (or answer empty), so a driver declaring the capability without them would
# fail late and quietly, e.g. a build asking ``create`` and getting "".
NEEDS_METHODS: dict[Capability, tuple[str, ...]] = {
    Capability.INVENTORY: ("inventory",),
    Capability.IMAGES: ("images",),
    Capability.PROVISION: ("create",),
    Capability.POWER: ("power",),
    Capability.TERMINATE: ("terminate",),
    Capability.LEAK_SWEEP: ("leaked", "find_tagged"),
    Capability.CHANGES: ("changes",),
    Capability.VOLUMES: ("create_volume", "attach_volume", "detach_volume"),
    Capability.REBUILD: ("rebuild",),
}
# Capabilities the engine uses together: a build lists the center's machines, finds a
# resumed build's instance by its tag and removes a failed or duplicate one; volumes
# are attached to machines the broker provisions.
NEEDS_CAPABILITIES: dict[Capability, frozenset[Capability]] = {
    Capability.PROVISION: frozenset(
        {Capability.INVENTORY, Capability.TERMINATE, Capability.LEAK_SWEEP}
    ),
    Capability.VOLUMES: frozenset({Capability.PROVISION}),
    Capability.REBUILD: frozenset({Capability.INVENTORY}),
}


class DriverContractError(TypeError):
    """An installed driver breaks the seam's contract: the broker refuses to start with
    it rather than fail on the first build or power action."""


def contract_faults(cls: type[CenterDriver]) -> list[str]:
    """What ``cls`` declares but does not provide, in words; empty when it conforms."""
    faults: list[str] = []
    if not cls.kind:
        faults.append("it sets no kind")
    if not isinstance(getattr(cls, "Params", None), type):
        faults.append("it has no Params model")
    if Capability.PROVISION in cls.capabilities and cls.ProvisionParams is None:
        faults.append("it declares provision but has no ProvisionParams model")
    for capability in sorted(cls.capabilities):
        for method in NEEDS_METHODS.get(capability, ()):
            if getattr(cls, method) is getattr(CenterDriver, method):
                faults.append(f"it declares {capability.value} but does not implement {method}()")
        missing = NEEDS_CAPABILITIES.get(capability, frozenset()) - cls.capabilities
        if missing:
            names = ", ".join(sorted(c.value for c in missing))
            faults.append(f"it declares {capability.value} without {names}")
    return faults


@cache
def drivers() -> dict[str, type[CenterDriver]]:
    """Every installed driver by kind; first-party drivers are entry points too.
    Raises ``DriverContractError`` naming the entry point of a driver that breaks the
    contract (see ``contract_faults``)."""
    found: dict[str, type[CenterDriver]] = {}
    for entry in entry_points(group="deskbroker.centers"):
        cls = entry.load()
        if isinstance(cls, type) and issubclass(cls, CenterDriver):
            faults = contract_faults(cls)
            if faults:
                raise DriverContractError(
                    f"center driver {entry.name!r} ({entry.value}) cannot be loaded: "
                    + "; ".join(faults)
                )
            found[entry.name] = cls
    return found


def driver_class(kind: str) -> type[CenterDriver]:
    known = drivers()
    if kind not in known:
        raise InvalidInput(
            f"unknown center kind {kind!r}; installed kinds: {', '.join(sorted(known)) or 'none'}"
        )
    return known[kind]


def validate_params(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check a center's params against its driver, with the driver's own messages."""
    cls = driver_class(kind)
    try:
        return cls.Params.model_validate(dict(params)).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"center params: {where}: {first['msg']}") from exc


def open_driver(kind: str, params: Mapping[str, Any], secrets: Mapping[str, str]) -> CenterDriver:
    return driver_class(kind)(params, secrets)


def validate_provision_params(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check the center's part of a pool's provisioning parameters against the driver's
    ``ProvisionParams``; the message names the field as the admin wrote it."""
    model = driver_class(kind).ProvisionParams
    if model is None:
        if params:
            raise InvalidInput(
                f"provisioning.parameters: a {kind} center cannot provision; "
                f"it takes no {', '.join(sorted(params))}"
            )
        return {}
    try:
        return model.model_validate(dict(params)).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"provisioning.parameters.{where}: {first['msg']}") from exc

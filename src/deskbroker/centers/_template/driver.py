"""A skeleton center driver: copy this folder, rename it and fill in each ``TODO``.

It is deliberately not registered (no entry point): a kind ``template`` would appear in
the admin's list of center kinds. It passes the registry's load-time checks as it is, so
each step of filling it in can be checked with the conformance suite.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from deskbroker.centers.base import (
    BuildLimits,
    Capability,
    CenterDriver,
    MachineInfo,
    PowerAction,
)
from deskbroker.errors import CenterError


class TemplateParams(BaseModel):
    """What an administrator sets on a center of this kind (secrets are separate: the
    broker stores them encrypted and passes them to ``__init__``)."""

    model_config = ConfigDict(extra="forbid")

    # TODO: how to reach the infrastructure. The outbound policy checks the hosts a
    # driver reaches: name them in ``outbound_targets`` (see centers/openstack/session.py).
    url: HttpUrl
    username: str = Field(min_length=1, max_length=255)
    timeout_s: float = Field(default=30.0, gt=0, le=300)
    max_in_flight: int = Field(default=10, ge=1, le=1000)


class TemplateProvisionParams(BaseModel):
    """What a pool may set for the machines this center builds. The admin API checks a
    pool's parameters with this model (a 422 naming the field); ``create`` reads them
    back with ``self.provision_params(request)``."""

    model_config = ConfigDict(extra="forbid")

    # TODO: the infrastructure's own words for what to build from and how big.
    template: str | None = Field(default=None, min_length=1, max_length=255)


class TemplateCenter(CenterDriver):
    """TODO: one sentence on what one center of this kind is (a host, a region...)."""

    kind: ClassVar[str] = "template"
    Params: ClassVar[type[BaseModel]] = TemplateParams
    # Declare only what is implemented: the registry refuses a driver that declares a
    # capability without its methods (and PROVISION without INVENTORY, TERMINATE,
    # LEAK_SWEEP and ProvisionParams). Add PROVISION, CHANGES, VOLUMES... as you go.
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.INVENTORY, Capability.POWER, Capability.PROBE}
    )
    ProvisionParams: ClassVar[type[BaseModel] | None] = TemplateProvisionParams

    def __init__(self, params: Mapping[str, Any], secrets: Mapping[str, str]) -> None:
        super().__init__(params, secrets)
        assert isinstance(self.params, TemplateParams)
        self.template_params: TemplateParams = self.params
        # TODO: build the client here, but do not connect: the broker opens a driver
        # once per center and shares it, so authenticate lazily and keep the session.

    def limits(self) -> BuildLimits:
        return BuildLimits(max_in_flight=self.template_params.max_in_flight)

    def inventory(self) -> list[MachineInfo]:
        # TODO: list every machine. Fill ``fault`` for a machine in error (the build's
        # failure says it) and ``desktop_id`` from the ``DESKTOP_KEY`` metadata the
        # engine gives each machine it asks for (a scan adopts, or reports as a leak).
        raise CenterError("the template driver reaches no infrastructure")

    def power(self, machine: MachineInfo, action: PowerAction) -> None:
        # TODO: ask for ``action``; do not wait for it to finish (scans see the result).
        # A refusal for lack of room is ``QuotaExceeded`` (centers.base; the engine backs
        # off), any other a ``CenterError`` whose message an administrator can act on.
        raise CenterError(f"the template driver cannot {action.value} {machine.name}")

"""What an administrator sets on a vSphere center, and what a pool sets for its desktops.

The vCenter password is the center secret ``password``. TLS is verified: against the
system's CAs, or against ``ca_pem``, a PEM bundle given in the params (a tenant
administrator may give one: it only narrows whom the broker trusts). ``insecure``
switches verification off; the password then goes to whoever answers on the address,
so only a global administrator may set it (``host_side_params``, checked by
``services/outbound_params.py``).
"""

from __future__ import annotations

import re
import ssl
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deskbroker.outbound import Target

# An inventory name the broker writes or looks up: a VM, a template, a datastore, a pool.
NAME = r"^[A-Za-z0-9][A-Za-z0-9 _.()+:-]{0,79}$"
# An inventory path below the datacenter ("vm/Desktops/Sales", "host/C0/Resources/VDI").
PATH = r"^[A-Za-z0-9 _.()+:-]+(/[A-Za-z0-9 _.()+:-]+)*$"


class VsphereParams(BaseModel):
    """How to reach one vCenter and where its desktops go."""

    model_config = ConfigDict(extra="forbid")
    host_side_params: ClassVar[frozenset[str]] = frozenset({"insecure"})

    host: str = Field(
        min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:\[\]-]+$", description="vCenter"
    )
    port: int = Field(default=443, ge=1, le=65535)
    username: str = Field(min_length=1, max_length=255, description="the broker's vCenter user")
    ca_pem: str | None = Field(
        default=None, max_length=65536, description="PEM CA bundle to verify vCenter's certificate"
    )
    insecure: bool = Field(
        default=False, description="skip TLS verification (global administrators only)"
    )
    datacenter: str | None = Field(
        default=None, pattern=NAME, description="the datacenter (default: the first one)"
    )
    folder: str | None = Field(
        default=None,
        pattern=PATH,
        description="VM folder for new desktops, below the datacenter's vm folder",
    )
    resource_pool: str | None = Field(
        default=None,
        pattern=PATH,
        description="resource pool path below the datacenter's host folder, e.g. C0/Resources",
    )
    datastores: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="datastores new desktops may use, in order (default: all of the datacenter)",
    )
    datastore_choice: Literal["most_free", "fill_in_order"] = "most_free"
    min_free_gb: float = Field(
        default=10.0, ge=0, le=1e6, description="a datastore with less free space is full"
    )
    clone: Literal["auto", "full", "linked"] = Field(
        default="auto", description="auto: linked when the template has a snapshot, else full"
    )
    broker_tag: str = Field(default="deskbroker", pattern=r"^[A-Za-z0-9_.:-]{1,40}$")
    max_desktops: int | None = Field(
        default=None, ge=0, le=100000, description="builds beyond this many are over quota"
    )
    reap_leaks: bool = Field(
        default=False, description="destroy VMs marked as this center's that no desktop owns"
    )
    timeout_s: float = Field(
        default=60.0, gt=0, le=600, description="the longest one call to vCenter may take"
    )
    max_in_flight: int = Field(default=10, ge=1, le=1000)
    build_timeout_s: float = Field(default=1800.0, gt=0, le=86400)

    @field_validator("datastores")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.fullmatch(NAME, name):
                raise ValueError(f"{name!r} is not a datastore name")
        return names

    @field_validator("ca_pem")
    @classmethod
    def _pem(cls, text: str | None) -> str | None:
        if text is None:
            return None
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ValueError("not a PEM certificate bundle")
        try:
            # Loaded as the connection will load it: a bundle OpenSSL refuses is a 422
            # now, not a failed scan later.
            ssl.create_default_context(cadata=text)
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(f"not a usable PEM certificate bundle: {exc}") from None
        return text

    def outbound_targets(self) -> list[Target]:
        """vCenter, checked against the outbound policy. Its value is host and port: the
        password is given for that one service, so moving either drops it."""
        bare = self.host.strip("[]")
        where = f"[{bare}]:{self.port}" if ":" in bare else f"{bare}:{self.port}"
        return [Target("host", where, bare)]


class VsphereProvisionParams(BaseModel):
    """What a pool sets for the desktops a vSphere center clones."""

    model_config = ConfigDict(extra="forbid")

    template: str = Field(pattern=NAME, description="the template to clone")
    memory_mib: int | None = Field(
        default=None, ge=4, le=24 * 1024 * 1024, description="default: the template's"
    )
    vcpus: int | None = Field(default=None, ge=1, le=768, description="default: the template's")

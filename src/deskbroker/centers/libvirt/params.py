"""What an administrator sets on a libvirt center, and what a pool sets for its desktops.

A libvirt URI can reach much more than a hypervisor: ``qemu:///system`` is the broker
host's own, ``+ssh`` and ``+tls`` use the host's keys and certificates, ``+ext`` runs a
command and query parameters name local files (``keyfile``, ``socket``, ``command``).
So the only URI a tenant administrator may write is a remote one over ``+tcp`` with no
query (SASL credentials as center secrets); anything else reads the broker host's own
files or credentials and is for a global administrator (``host_side_uri``), and ``+ext``
is refused outright.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deskbroker.outbound import Target

# driver[+transport]://[user@][host[:port]]/path[?query]
_URI = re.compile(r"^(?P<driver>[a-z][a-z0-9]*)(?:\+(?P<transport>[a-z0-9]+))?://")
_DRIVERS = frozenset({"qemu", "xen", "test"})
_TRANSPORTS = frozenset({"", "tcp", "tls", "ssh", "libssh", "libssh2", "unix"})
# A libvirt object name the broker writes: a domain, a volume, a pool, a network.
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+:-]{0,99}$"


class LibvirtParams(BaseModel):
    """How to reach one libvirt host. A SASL password is the center secret ``password``."""

    model_config = ConfigDict(extra="forbid")
    host_side_params: ClassVar[frozenset[str]] = frozenset({"host_side_uri"})

    uri: str = Field(
        min_length=3,
        max_length=500,
        description="the libvirt connection URI, e.g. qemu+tcp://kvm1.example.org/system",
    )
    username: str | None = Field(
        default=None, min_length=1, max_length=255, description="SASL user name, if any"
    )
    domain_type: Literal["kvm", "qemu", "xen", "test"] = Field(
        default="kvm", description="the <domain type> of new desktops (test: libvirt's test driver)"
    )
    storage_pool: str = Field(default="default", pattern=NAME)
    image_pool: str | None = Field(
        default=None, pattern=NAME, description="where template images live (default: storage_pool)"
    )
    address_source: Literal["lease", "agent", "arp"] = Field(
        default="lease", description="how a running desktop's address is found"
    )
    broker_tag: str = Field(default="deskbroker", pattern=r"^[A-Za-z0-9_.:-]{1,40}$")
    max_desktops: int | None = Field(
        default=None, ge=0, le=100000, description="builds beyond this many are over quota"
    )
    reap_leaks: bool = Field(
        default=False, description="delete domains marked as this center's that no desktop owns"
    )
    timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="the longest one call to libvirt may take"
    )
    max_in_flight: int = Field(default=10, ge=1, le=1000)
    build_timeout_s: float = Field(default=900.0, gt=0, le=86400)

    @field_validator("uri")
    @classmethod
    def _known_uri(cls, uri: str) -> str:
        found = _URI.match(uri)
        if found is None:
            raise ValueError("not a libvirt URI (driver[+transport]://[host]/path)")
        if found["driver"] not in _DRIVERS:
            raise ValueError(
                f"driver {found['driver']!r} is not one of {', '.join(sorted(_DRIVERS))}"
            )
        transport = found["transport"] or ""
        if transport not in _TRANSPORTS:
            # +ext runs a command on the broker host: never.
            raise ValueError(f"transport {transport!r} is not allowed")
        if any(ord(c) < 33 for c in uri):
            raise ValueError("the URI may not contain spaces or control characters")
        return uri

    @property
    def host(self) -> str:
        """The remote host the URI names; empty for the broker host's own hypervisor."""
        return urlsplit(self.uri).hostname or ""

    @property
    def host_side_uri(self) -> str:
        """The URI when it uses the broker host's own hypervisor, files or credentials
        (anything but a plain ``+tcp`` URI with no query); empty otherwise. Only a global
        administrator may save such a URI (``services/outbound_params.py``)."""
        found = _URI.match(self.uri)
        transport = (found["transport"] if found else None) or ""
        parts = urlsplit(self.uri)
        if transport == "tcp" and parts.hostname and not parts.query:
            return ""
        return self.uri

    @property
    def images_from(self) -> str:
        return self.image_pool or self.storage_pool

    def outbound_targets(self) -> list[Target]:
        """The remote libvirt host, checked against the outbound policy."""
        return [Target("uri", self.uri, self.host)] if self.host else []


class LibvirtProvisionParams(BaseModel):
    """What a pool sets for the desktops a libvirt center builds: the template image (a
    volume of the image pool, used as the backing file of each desktop's qcow2 disk) and
    the machine's size."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(pattern=NAME, description="the template volume in the image pool")
    memory_mib: int = Field(default=2048, ge=64, le=4 * 1024 * 1024)
    vcpus: int = Field(default=2, ge=1, le=512)
    disk_gb: int | None = Field(
        default=None, ge=1, le=65536, description="disk size (default: the image's)"
    )
    network: str | None = Field(
        default="default", pattern=NAME, description="libvirt network (none: no interface)"
    )
    disk_bus: Literal["virtio", "sata", "scsi", "ide", "xen"] = "virtio"
    graphics: Literal["none", "vnc", "spice"] = Field(
        default="none", description="a console on the host's loopback, for operators"
    )

"""Parameters of the NIS identity source (validated on write).

NIS has no credentials of its own: the source has no secrets. Anyone who can reach a
ypserv and knows (or guesses) the domain can read its maps, which is why ypserv
restricts access with securenets and gives ``shadow.byname`` only to privileged ports.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from deskbroker.identity.yp import MAX_NAME
from deskbroker.outbound import Target

# A NIS domain or map name: no separators ypserv would read as a path, no spaces.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


def split_server(spec: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as (host, port or None)."""
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        port = rest.removeprefix(":") if rest.startswith(":") else None
        if rest and port is None:
            raise ValueError(f"{spec!r}: write an IPv6 server as [::1] or [::1]:834")
    elif spec.count(":") == 1:
        host, port = spec.split(":")
    elif ":" in spec:
        host, port = spec, None  # a bare IPv6 address
    else:
        host, port = spec, None
    if not host or (":" not in host and not _HOST.match(host)):
        raise ValueError(f"{spec!r} is not a host name or address")
    if port is None:
        return host, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{spec!r} has a bad port")
    return host, int(port)


def _server(value: str) -> str:
    split_server(value)
    return value


def _name(value: str) -> str:
    if len(value) > MAX_NAME or not _NAME.match(value):
        raise ValueError(
            f"{value!r} is not a NIS name such as example.org or passwd.byname "
            f"(letters, digits, '.', '-', '_', '+'; at most {MAX_NAME})"
        )
    return value


Server = Annotated[str, Field(max_length=300), AfterValidator(_server)]
Name = Annotated[str, AfterValidator(_name)]


class NisParams(BaseModel):
    """A NIS domain served by one or more ypservs."""

    model_config = ConfigDict(extra="forbid")
    # Reading the shadow map binds a privileged port, which ypserv trusts as the broker
    # host's root: a host-side credential, so only a global admin may ask for it.
    host_side_params: ClassVar[frozenset[str]] = frozenset({"shadow_map"})

    domain: Name = Field(description="the NIS domain name (domainname(1)), not a DNS domain")
    servers: list[Server] = Field(
        min_length=1,
        max_length=16,
        description="host or host:port, tried in order; without a port the portmapper says",
    )
    portmapper_port: int = Field(
        default=111, gt=0, lt=65536, description="where the servers' portmappers listen"
    )
    passwd_map: Name = "passwd.byname"
    group_map: Name | None = Field(
        default="group.byname", description="read whole for memberships; null for no groups"
    )
    shadow_map: Name | None = Field(
        default="shadow.byname",
        description="read (from a privileged port) when passwd holds 'x' instead of a hash; "
        "global admins only (a tenant admin's source sets null)",
    )
    email_domain: Annotated[str, Field(max_length=253)] | None = Field(
        default=None, description="a user's email is name@email_domain"
    )
    connect_timeout_s: float = Field(default=2.0, gt=0, le=60)
    timeout_s: float = Field(default=5.0, gt=0, le=120, description="per NIS call")
    dead_server_retry_s: float = Field(
        default=30.0, ge=0, le=3600, description="how long a dead server is skipped"
    )
    group_cache_s: float = Field(
        default=60.0, ge=0, le=86400, description="how long the group map read is reused"
    )

    def outbound_targets(self) -> list[Target]:
        return [
            Target(f"servers.{i}", spec, split_server(spec)[0])
            for i, spec in enumerate(self.servers)
        ]

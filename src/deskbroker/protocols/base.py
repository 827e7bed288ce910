"""What every protocol builder shares: the target, the descriptor, safe text."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from deskbroker.protocols.kinds import Protocol


@dataclass(frozen=True)
class Target:
    """Where the connection goes: resolved from the desktop and the plan."""

    desktop_name: str
    host: str
    port: int


@dataclass(frozen=True)
class ConnectionDescriptor:
    """A launch file or URI for one connection.

    ``content`` is the file a viewer reads (``filename``, ``media_type``); ``uri`` the
    same connection as a link. ``options`` are the plan's settings as the builder read
    them, for a page or client that shapes the connection itself (the HTML5 viewers).
    """

    protocol: str
    host: str
    port: int
    uri: str
    filename: str
    media_type: str
    content: str
    options: Mapping[str, Any] = field(default_factory=dict)


# A host name as DNS allows it; anything else (spaces, newlines, quotes) in an address a
# center reported would end up inside a descriptor file.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def usable_host(address: str) -> bool:
    """An IP address or a DNS host name: nothing that could break a descriptor's lines."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return bool(_HOST_NAME.match(address))
    return True


def safe_name(name: str) -> str:
    """A desktop's name as a file name: letters, digits, dot, dash and underscore."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "desktop"


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ProtocolBuilder:
    """Builds one protocol's descriptor from the target, the user and the plan's
    settings (already validated by the protocol's settings model)."""

    protocol: ClassVar[Protocol]

    def descriptor(
        self, target: Target, username: str, settings: Mapping[str, Any]
    ) -> ConnectionDescriptor:
        raise NotImplementedError

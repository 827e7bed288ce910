"""Connection descriptors: what a native viewer or browser needs to reach a desktop.

Each protocol implements ``descriptor(target, user, settings)``; the registry maps a
protocol name to its builder.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar
from urllib.parse import quote

from deskbroker.errors import Conflict, InvalidInput


class Protocol(StrEnum):
    RDP = "rdp"
    VNC = "vnc"
    SSH = "ssh"


DEFAULT_PORTS: dict[Protocol, int] = {Protocol.RDP: 3389, Protocol.VNC: 5900, Protocol.SSH: 22}


@dataclass(frozen=True)
class Target:
    """Where the connection goes: resolved from the desktop and the plan."""

    desktop_name: str
    host: str
    port: int


@dataclass(frozen=True)
class ConnectionDescriptor:
    protocol: str
    host: str
    port: int
    uri: str
    filename: str
    media_type: str
    content: str


# A host name as DNS allows it; anything else (spaces, newlines, quotes) in an address a
# center reported would end up inside a descriptor file.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def usable_host(address: str) -> bool:
    """An IP address or a DNS host name: nothing that could break a descriptor's lines."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return bool(_HOST_NAME.match(address))
    return True


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "desktop"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ProtocolBuilder:
    """Builds one protocol's descriptor."""

    protocol: ClassVar[Protocol]

    def descriptor(
        self, target: Target, username: str, settings: Mapping[str, Any]
    ) -> ConnectionDescriptor:
        raise InvalidInput(f"no descriptor for {self.protocol}")


class RdpBuilder(ProtocolBuilder):
    """A Microsoft ``.rdp`` file, read by mstsc, FreeRDP and Remmina."""

    protocol = Protocol.RDP

    def descriptor(
        self, target: Target, username: str, settings: Mapping[str, Any]
    ) -> ConnectionDescriptor:
        lines = [
            f"full address:s:{_host_port(target.host, target.port)}",
            f"username:s:{username}",
            f"screen mode id:i:{2 if settings.get('fullscreen', True) else 1}",
            "use multimon:i:{}".format(1 if settings.get("multimon") else 0),
            "redirectclipboard:i:{}".format(0 if settings.get("clipboard") is False else 1),
            "redirectprinters:i:{}".format(1 if settings.get("printers") else 0),
            "redirectdrives:i:{}".format(1 if settings.get("drives") else 0),
            "audiomode:i:0",
            "authentication level:i:2",
            "prompt for credentials:i:0",
            f"session bpp:i:{int(settings.get('color_depth', 32))}",
        ]
        return ConnectionDescriptor(
            protocol=self.protocol.value,
            host=target.host,
            port=target.port,
            uri=f"rdp://full%20address=s:{quote(_host_port(target.host, target.port))}"
            f"&username=s:{quote(username)}",
            filename=f"{_safe_name(target.desktop_name)}.rdp",
            media_type="application/x-rdp",
            content="\r\n".join(lines) + "\r\n",
        )


class VncBuilder(ProtocolBuilder):
    """A ``.vnc`` file in the format TigerVNC, RealVNC and Remmina import."""

    protocol = Protocol.VNC

    def descriptor(
        self, target: Target, username: str, settings: Mapping[str, Any]
    ) -> ConnectionDescriptor:
        lines = [
            "[Connection]",
            f"Host={target.host}",
            f"Port={target.port}",
            "[Options]",
            f"FullScreen={1 if settings.get('fullscreen', False) else 0}",
            f"Shared={1 if settings.get('shared', True) else 0}",
            f"ViewOnly={1 if settings.get('view_only', False) else 0}",
        ]
        return ConnectionDescriptor(
            protocol=self.protocol.value,
            host=target.host,
            port=target.port,
            uri=f"vnc://{_host_port(target.host, target.port)}",
            filename=f"{_safe_name(target.desktop_name)}.vnc",
            media_type="application/x-vnc",
            content="\n".join(lines) + "\n",
        )


class SshBuilder(ProtocolBuilder):
    """An ``ssh://`` URI (RFC draft form), understood by most terminal launchers."""

    protocol = Protocol.SSH

    def descriptor(
        self, target: Target, username: str, settings: Mapping[str, Any]
    ) -> ConnectionDescriptor:
        uri = f"ssh://{quote(username, safe='')}@{_host_port(target.host, target.port)}"
        return ConnectionDescriptor(
            protocol=self.protocol.value,
            host=target.host,
            port=target.port,
            uri=uri,
            filename=f"{_safe_name(target.desktop_name)}.ssh.txt",
            media_type="text/plain",
            content=uri + "\n",
        )


BUILDERS: dict[Protocol, ProtocolBuilder] = {
    b.protocol: b for b in (RdpBuilder(), VncBuilder(), SshBuilder())
}

DEFAULT_PLAN: list[dict[str, Any]] = [
    {"protocol": "rdp"},
    {"protocol": "vnc"},
    {"protocol": "ssh"},
]


def choose(
    plan: list[Mapping[str, Any]] | None, requested: str | None
) -> tuple[Protocol, Mapping[str, Any]]:
    """The requested protocol if the plan offers it, else the plan's first."""
    entries = list(plan or DEFAULT_PLAN)
    if requested is not None:
        for entry in entries:
            if entry.get("protocol") == requested:
                return Protocol(requested), entry
        offered = ", ".join(str(e.get("protocol")) for e in entries)
        raise InvalidInput(
            f"protocol {requested!r} is not offered for this desktop; offered: {offered}"
        )
    first = entries[0]
    return Protocol(str(first["protocol"])), first


def build(
    protocol: Protocol,
    plan_entry: Mapping[str, Any],
    *,
    desktop_name: str,
    address: str,
    desktop_ports: Mapping[str, Any],
    username: str,
) -> ConnectionDescriptor:
    """The descriptor for one desktop; a port on the desktop beats the plan's."""
    port = int(
        desktop_ports.get(protocol.value) or plan_entry.get("port") or DEFAULT_PORTS[protocol]
    )
    if not usable_host(address):
        raise Conflict(
            f"desktop {_CONTROL.sub('?', desktop_name)} has no usable address "
            f"({_CONTROL.sub('?', address)!r}); ask an administrator to check its center"
        )
    target = Target(desktop_name=desktop_name, host=address, port=port)
    # A directory's name never carries a line break into an .rdp or .vnc file.
    clean_user = _CONTROL.sub("", username)
    return BUILDERS[protocol].descriptor(target, clean_user, plan_entry.get("settings") or {})

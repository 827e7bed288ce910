"""Connection descriptors: what a native viewer or browser needs to reach a desktop.

Each protocol has a builder (``descriptor(target, user, settings)``) in ``native``,
``launchers`` or ``html5``; the registry here maps a protocol to its builder, and
``build`` resolves the target of one desktop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from deskbroker.errors import Conflict
from deskbroker.protocols.base import (
    CONTROL,
    ConnectionDescriptor,
    ProtocolBuilder,
    Target,
    usable_host,
)
from deskbroker.protocols.html5 import Html5RdpBuilder, Html5SshBuilder, Html5VncBuilder
from deskbroker.protocols.kinds import (
    DEFAULT_PORTS,
    HTML5_NATIVE,
    HTML5_PAGES,
    IN_BROWSER,
    ClientKind,
    Protocol,
    service_of,
)
from deskbroker.protocols.launchers import (
    DcvBuilder,
    NoMachineBuilder,
    PcoipBuilder,
    RgsBuilder,
    TgxBuilder,
)
from deskbroker.protocols.native import RdpBuilder, SpiceBuilder, SshBuilder, VncBuilder
from deskbroker.protocols.plans import DEFAULT_PLAN, PlanEntry, choose, entries_of

__all__ = [
    "BUILDERS",
    "DEFAULT_PLAN",
    "DEFAULT_PORTS",
    "HTML5_NATIVE",
    "HTML5_PAGES",
    "IN_BROWSER",
    "ClientKind",
    "ConnectionDescriptor",
    "PlanEntry",
    "Protocol",
    "Target",
    "build",
    "choose",
    "entries_of",
    "usable_host",
    "with_launch_url",
]

BUILDERS: dict[Protocol, ProtocolBuilder] = {
    b.protocol: b
    for b in (
        RdpBuilder(),
        VncBuilder(),
        SshBuilder(),
        SpiceBuilder(),
        Html5VncBuilder(),
        Html5SshBuilder(),
        Html5RdpBuilder(),
        NoMachineBuilder(),
        DcvBuilder(),
        PcoipBuilder(),
        TgxBuilder(),
        RgsBuilder(),
    )
}


def build(
    protocol: Protocol,
    plan_entry: PlanEntry,
    *,
    desktop_name: str,
    address: str,
    desktop_ports: Mapping[str, Any],
    username: str,
) -> ConnectionDescriptor:
    """The descriptor for one desktop; a port on the desktop beats the plan's."""
    port = int(
        desktop_ports.get(service_of(protocol)) or plan_entry.port or DEFAULT_PORTS[protocol]
    )
    if not usable_host(address):
        raise Conflict(
            f"desktop {CONTROL.sub('?', desktop_name)} has no usable address "
            f"({CONTROL.sub('?', address)!r}); ask an administrator to check its center"
        )
    # A center's or directory's name never carries a line break into a launch file.
    target = Target(desktop_name=CONTROL.sub("", desktop_name), host=address, port=port)
    clean_user = CONTROL.sub("", username)
    return BUILDERS[protocol].descriptor(target, clean_user, plan_entry.settings)


def with_launch_url(descriptor: ConnectionDescriptor, url: str) -> ConnectionDescriptor:
    """An HTML5 descriptor completed with its viewer page's address (with its ticket):
    the link becomes the URI and the file (a URI list); the page's options stay."""
    return replace(descriptor, uri=url, content=url + "\r\n")

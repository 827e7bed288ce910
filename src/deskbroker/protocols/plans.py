"""Protocol plans: which of a plan's ordered protocols a connection uses.

A plan lists protocols in the administrator's order of preference. The choice follows
the client: a browser gets the plan's first protocol that opens in the page (HTML5),
else the first it can download as a file; a native client (the CLI) gets the first it
has a viewer for (the ``accepts`` it sends), else the first native protocol, whose file
it writes for the user. A protocol asked for by name is honoured when the plan offers it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from deskbroker.errors import InvalidInput
from deskbroker.protocols.kinds import IN_BROWSER, ClientKind, Protocol

DEFAULT_PLAN: list[dict[str, Any]] = [
    {"protocol": "rdp"},
    {"protocol": "vnc"},
    {"protocol": "ssh"},
    {"protocol": "html5-vnc"},
    {"protocol": "html5-ssh"},
]


def _protocol(entry: Mapping[str, Any]) -> Protocol | None:
    name = str(entry.get("protocol"))
    # A plan stored by a later version may name a protocol this one does not know.
    return Protocol(name) if name in Protocol._value2member_map_ else None


def choose(
    plan: Sequence[Mapping[str, Any]] | None,
    requested: str | None,
    client: ClientKind | None = None,
    accepts: Sequence[str] | None = None,
    *,
    in_page: bool = True,
) -> tuple[Protocol, Mapping[str, Any]]:
    """The protocol and plan entry for one connection.

    ``client`` None keeps the plan's first protocol (a caller that says nothing of itself
    gets what the administrator put first). ``in_page`` False (the broker has no gateway
    to carry a page's desktop) gives a browser the plan's first native protocol: its
    launch file, downloaded, rather than a page that could not connect.
    """
    entries = [(p, e) for e in (plan or DEFAULT_PLAN) if (p := _protocol(e)) is not None]
    if not entries:
        raise InvalidInput("this desktop's protocol plan offers no protocol this broker knows")
    if requested is not None:
        for protocol, entry in entries:
            if protocol.value == requested:
                return protocol, entry
        offered = ", ".join(p.value for p, _ in entries)
        raise InvalidInput(
            f"protocol {requested!r} is not offered for this desktop; offered: {offered}"
        )
    if client is ClientKind.BROWSER:
        for protocol, entry in entries:
            if (protocol in IN_BROWSER) is in_page:
                return protocol, entry
    elif client is ClientKind.NATIVE:
        native = [(p, e) for p, e in entries if p not in IN_BROWSER]
        wanted = set(accepts or ())
        for protocol, entry in native:
            if protocol.value in wanted:
                return protocol, entry
        if native:
            return native[0]
    return entries[0]


def offered(plan: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """The protocols a plan offers, in its order."""
    return [p.value for e in (plan or DEFAULT_PLAN) if (p := _protocol(e)) is not None]

"""Protocol plans: which of a plan's ordered protocols a connection uses.

A plan lists protocols in the administrator's order of preference. The choice follows
the client: a browser gets the plan's first protocol that opens in the page (HTML5),
else the first it can download as a file; a native client (the CLI) gets the first it
has a viewer for (the ``accepts`` it sends), else the first native protocol, whose file
it writes for the user. A protocol asked for by name is honoured when the plan offers it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deskbroker.errors import InvalidInput
from deskbroker.protocols.kinds import IN_BROWSER, ClientKind, Protocol


@dataclass(frozen=True)
class PlanEntry:
    """One protocol of a plan: its port when the plan sets one, and its settings (checked
    by ``protocols.settings`` when the plan was written)."""

    protocol: Protocol
    port: int | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)


def entries_of(stored: Iterable[Mapping[str, Any]] | None) -> list[PlanEntry]:
    """A stored plan (its JSON entries) read back typed. A protocol this version does not
    know (a plan written by a later version) is left out, not an error."""
    out: list[PlanEntry] = []
    for raw in stored or ():
        name = str(raw.get("protocol"))
        if name not in Protocol._value2member_map_:
            continue
        port = raw.get("port")
        out.append(
            PlanEntry(Protocol(name), int(port) if port else None, dict(raw.get("settings") or {}))
        )
    return out


DEFAULT_PLAN: tuple[PlanEntry, ...] = tuple(
    PlanEntry(p)
    for p in (Protocol.RDP, Protocol.VNC, Protocol.SSH, Protocol.HTML5_VNC, Protocol.HTML5_SSH)
)


def choose(
    plan: Sequence[PlanEntry] | None,
    requested: str | None,
    client: ClientKind | None = None,
    accepts: Sequence[str] | None = None,
    *,
    in_page: bool = True,
) -> tuple[Protocol, PlanEntry]:
    """The protocol and plan entry for one connection.

    ``client`` None keeps the plan's first protocol (a caller that says nothing of itself
    gets what the administrator put first). ``in_page`` False (the broker has no gateway
    to carry a page's desktop) gives a browser the plan's first native protocol: its
    launch file, downloaded, rather than a page that could not connect.
    """
    # No plan gives the default; a plan of protocols this version does not know, none.
    entries = [(e.protocol, e) for e in (DEFAULT_PLAN if plan is None else plan)]
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


def offered(plan: Sequence[PlanEntry] | None) -> list[str]:
    """The protocols a plan offers, in its order."""
    return [e.protocol.value for e in (DEFAULT_PLAN if plan is None else plan)]

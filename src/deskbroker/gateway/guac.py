"""HTML5 RDP through an external guacd, speaking the Guacamole protocol.

Debian ships no guacd, so the gateway talks to one the operator runs (its address in
``DESKBROKER_GATEWAY_GUACD``). The browser runs ``guacamole-common-js`` (from npm) with
a ``Guacamole.WebSocketTunnel`` to ``/ws/rdp``; the gateway

1. checks the ticket (an ``html5-rdp`` one) and the address its desktop resolves to
   against the outbound policy,
2. does the handshake with guacd for the ticket's target: ``select rdp``, reads ``args``,
   sends ``size``, ``audio``, ``video``, ``image`` and ``connect`` with a value for each
   argument guacd asked for, waits for ``ready``; the ``hostname`` is the checked address,
   never the desktop's name (guacd would resolve it again, maybe elsewhere: DNS rebinding),
3. tells the browser its tunnel id (the internal instruction ``0.,36.<uuid>;``), then relays
   whole instructions both ways, answering the tunnel's own pings itself.

An instruction is ``LENGTH.VALUE`` elements separated by ``,`` and ended by ``;``, where
LENGTH counts Unicode code points (see the Guacamole protocol reference).
"""

from __future__ import annotations

import asyncio
import codecs
import uuid
from collections.abc import Mapping, Sequence

from starlette.websockets import WebSocket

from deskbroker.domain.tickets import Ticket
from deskbroker.gateway.accounting import Meter
from deskbroker.gateway.relay import CHUNK, checked_address, run_both

PROTOCOL_VERSION = "VERSION_1_5_0"
# The largest instruction the gateway buffers; guacd's own limit is 8 KiB per element.
MAX_INSTRUCTION_CHARS = 1 << 20


class GuacError(Exception):
    """The other side does not speak the Guacamole protocol as expected."""


def encode(*elements: str) -> str:
    """One instruction: ``encode("size", "1024", "768")`` is ``4.size,4.1024,3.768;``."""
    return ",".join(f"{len(e)}.{e}" for e in elements) + ";"


def complete_prefix(text: str) -> int:
    """How many characters of ``text`` are whole instructions (the rest waits for more)."""
    end = 0
    pos = 0
    while True:
        dot = text.find(".", pos)
        if dot < 0:
            break
        digits = text[pos:dot]
        if not digits.isdigit():
            raise GuacError(f"malformed instruction near {text[pos : pos + 20]!r}")
        stop = dot + 1 + int(digits)
        if stop >= len(text):
            break
        if text[stop] == ";":
            end = stop + 1
        elif text[stop] != ",":
            raise GuacError("an element is not followed by ',' or ';'")
        pos = stop + 1
    if end == 0 and len(text) > MAX_INSTRUCTION_CHARS:
        raise GuacError("an instruction is longer than the gateway accepts")
    return end


def decode(text: str) -> list[list[str]]:
    """The whole instructions in ``text`` (which must end at an instruction's end)."""
    out: list[list[str]] = []
    current: list[str] = []
    pos = 0
    while pos < len(text):
        dot = text.index(".", pos)
        length = int(text[pos:dot])
        value = text[dot + 1 : dot + 1 + length]
        current.append(value)
        sep = text[dot + 1 + length]
        pos = dot + 2 + length
        if sep == ";":
            out.append(current)
            current = []
    return out


class InstructionReader:
    """Reads whole instructions from guacd's byte stream."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._buffer = ""

    async def chunk(self) -> str:
        """The next run of whole instructions ("" when guacd closed)."""
        while True:
            end = complete_prefix(self._buffer)
            if end:
                out, self._buffer = self._buffer[:end], self._buffer[end:]
                return out
            data = await self._reader.read(CHUNK)
            if not data:
                return ""
            self._buffer += self._decoder.decode(data)

    async def instruction(self) -> list[str]:
        """The next single instruction (used during the handshake)."""
        while True:
            end = complete_prefix(self._buffer)
            if end:
                first = decode(self._buffer[:end])[0]
                self._buffer = self._buffer[len(encode(*first)) :]
                return first
            data = await self._reader.read(CHUNK)
            if not data:
                raise GuacError("guacd closed the connection during the handshake")
            self._buffer += self._decoder.decode(data)


def connect_values(
    ticket: Ticket, address: str, asked: Sequence[str], size: tuple[int, int, int]
) -> list[str]:
    """A value for each argument guacd asked for, in its order; unknown ones empty.

    ``address``: where guacd connects, the one the outbound policy was checked against."""
    known: Mapping[str, str] = {
        "hostname": address,
        "port": str(ticket.port),
        "username": ticket.username,
        # The user's password is typed into the desktop's own login screen.
        "security": "any",
        "ignore-cert": "true",
        "width": str(size[0]),
        "height": str(size[1]),
        "dpi": str(size[2]),
        "resize-method": "display-update",
    }
    values = []
    for name in asked:
        if name.startswith("VERSION_"):
            values.append(PROTOCOL_VERSION)
        else:
            values.append(known.get(name, ""))
    return values


async def handshake(
    reader: InstructionReader,
    writer: asyncio.StreamWriter,
    ticket: Ticket,
    address: str,
    size: tuple[int, int, int],
    protocol: str = "rdp",
) -> str:
    """Select the protocol, answer guacd's arguments (guacd connects to ``address``) and
    return its connection id."""
    writer.write(encode("select", protocol).encode())
    await writer.drain()
    args = await reader.instruction()
    if not args or args[0] != "args":
        raise GuacError(f"guacd answered {args[:1]} to select, not args")
    width, height, dpi = size
    for instruction in (
        encode("size", str(width), str(height), str(dpi)),
        encode("audio"),
        encode("video"),
        encode("image", "image/png", "image/jpeg", "image/webp"),
        encode("connect", *connect_values(ticket, address, args[1:], size)),
    ):
        writer.write(instruction.encode())
    await writer.drain()
    ready = await reader.instruction()
    if not ready or ready[0] != "ready":
        detail = ",".join(ready[1:3]) if ready and ready[0] == "error" else str(ready[:1])
        raise GuacError(f"guacd did not get ready: {detail}")
    return ready[1] if len(ready) > 1 else ""


def _size(query: Mapping[str, str]) -> tuple[int, int, int]:
    def number(name: str, default: int, low: int, high: int) -> int:
        text = query.get(name, "")
        return min(high, max(low, int(text))) if text.isdigit() else default

    return (
        number("width", 1024, 64, 8192),
        number("height", 768, 64, 8192),
        number("dpi", 96, 48, 600),
    )


async def tunnel(
    ws: WebSocket, ticket: Ticket, meter: Meter, guacd: tuple[str, int], timeout_s: float
) -> None:
    """Carry one Guacamole session between the browser and guacd, to the address the
    ticket's desktop resolves to once the outbound policy allows it (``TargetDenied``,
    an OSError, when it does not)."""
    # Before guacd is asked anything: it connects on the gateway's behalf.
    try:
        address = await asyncio.wait_for(checked_address(ticket), timeout_s)
    except TimeoutError as exc:
        raise OSError(
            f"desktop {ticket.desktop_name}'s name {ticket.host} does not resolve"
        ) from exc
    try:
        guac_reader, writer = await asyncio.wait_for(asyncio.open_connection(*guacd), timeout_s)
    except (OSError, TimeoutError) as exc:
        raise OSError(f"guacd at {guacd[0]}:{guacd[1]} does not answer") from exc
    reader = InstructionReader(guac_reader)
    try:
        await asyncio.wait_for(
            handshake(reader, writer, ticket, address, _size(ws.query_params)), timeout_s
        )
        await ws.send_text(encode("", str(uuid.uuid4())))

        async def down() -> None:
            while True:
                text = await reader.chunk()
                if not text:
                    return
                meter.down += len(text)
                await ws.send_text(text)

        async def up() -> None:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text") or (message.get("bytes") or b"").decode()
                if text.startswith("0.,"):
                    # The tunnel's own instructions (ping) are answered here, not by guacd.
                    for instruction in decode(text):
                        if instruction[:2] == ["", "ping"]:
                            await ws.send_text(encode(*instruction))
                    continue
                meter.up += len(text)
                writer.write(text.encode())
                await writer.drain()

        await run_both(down(), up())
    finally:
        writer.close()

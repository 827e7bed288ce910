"""WebSocket to TCP: the bytes of noVNC's RFB (and guacd's instructions) both ways."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from starlette.websockets import WebSocket, WebSocketDisconnect

from deskbroker import outbound
from deskbroker.domain.tickets import Ticket
from deskbroker.gateway.accounting import Meter

log = logging.getLogger("deskbroker.gateway")

CHUNK = 256 * 1024


class TargetDenied(OSError):
    """The ticket's desktop resolves to an address the outbound policy denies."""


async def checked_address(ticket: Ticket) -> str:
    """The address the ticket's host resolves to (its first answer), refused with
    ``TargetDenied`` when the process's outbound policy denies it: the broker checks
    addresses written as numbers, a name is only known here, when it is resolved."""
    loop = asyncio.get_running_loop()
    found = await loop.getaddrinfo(ticket.host, ticket.port, type=socket.SOCK_STREAM)
    if not found:
        raise OSError(f"{ticket.host} resolves to no address")
    address = str(found[0][4][0])
    reason = outbound.current().refusal(address)
    if reason is not None:
        raise TargetDenied(
            f"desktop {ticket.desktop_name} at {ticket.host} is not connected to: {reason}; "
            "on the gateway the settings are DESKBROKER_GATEWAY_OUTBOUND_DENY and _ALLOW"
        )
    return address


def came_back(writer: asyncio.StreamWriter, ticket: Ticket) -> str | None:
    """Why a connection just opened is refused: it came back to the gateway's own host
    (its peer is its own local address, not loopback), as a desktop address the host
    took after its addresses were last read would. ``None`` when it did not."""
    peer, local = writer.get_extra_info("peername"), writer.get_extra_info("sockname")
    if not isinstance(peer, tuple) or not isinstance(local, tuple):
        return None
    reason = outbound.current().connection_refusal(str(peer[0]), str(local[0]))
    if reason is None:
        return None
    return (
        f"desktop {ticket.desktop_name} at {ticket.host} is not connected to: {reason}; "
        "on the gateway the settings are DESKBROKER_GATEWAY_OUTBOUND_DENY and _ALLOW"
    )


async def open_target(
    ticket: Ticket, timeout_s: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to the ticket's desktop, at exactly the address the outbound
    policy was checked against (a name may resolve differently the next time);
    ``TargetDenied`` when the policy refuses it, OSError in words if it does not answer."""

    async def checked_connection() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(await checked_address(ticket), ticket.port)
        reason = came_back(writer, ticket)
        if reason is not None:
            writer.close()
            raise TargetDenied(reason)
        return reader, writer

    try:
        return await asyncio.wait_for(checked_connection(), timeout_s)
    except TargetDenied:
        raise
    except (OSError, TimeoutError) as exc:
        raise OSError(
            f"desktop {ticket.desktop_name} does not answer on {ticket.host}:{ticket.port}"
        ) from exc


async def pump_tcp_to_ws(reader: asyncio.StreamReader, ws: WebSocket, meter: Meter) -> None:
    while True:
        data = await reader.read(CHUNK)
        if not data:
            return
        meter.down += len(data)
        await ws.send_bytes(data)


async def pump_ws_to_tcp(ws: WebSocket, writer: asyncio.StreamWriter, meter: Meter) -> None:
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data is None:
            text = message.get("text")
            data = text.encode() if text is not None else b""
        if data:
            meter.up += len(data)
            writer.write(data)
            await writer.drain()


async def run_both(*coroutines: object) -> None:
    """Run the pumps until the first ends (either side closed); cancel the other."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]  # type: ignore[call-overload]
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, OSError):
                await task
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, WebSocketDisconnect | OSError | ConnectionError):
                log.warning("relay ended by %r", exc)


async def relay(ws: WebSocket, ticket: Ticket, meter: Meter, timeout_s: float) -> None:
    """Carry one noVNC connection to its desktop until either side closes."""
    reader, writer = await open_target(ticket, timeout_s)
    try:
        await run_both(pump_tcp_to_ws(reader, ws, meter), pump_ws_to_tcp(ws, writer, meter))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

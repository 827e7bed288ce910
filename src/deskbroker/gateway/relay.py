"""WebSocket to TCP: the bytes of noVNC's RFB (and guacd's instructions) both ways."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from deskbroker.domain.tickets import Ticket
from deskbroker.gateway.accounting import Meter

log = logging.getLogger("deskbroker.gateway")

CHUNK = 256 * 1024


async def open_target(
    ticket: Ticket, timeout_s: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to the ticket's desktop; OSError in words if it does not answer."""
    try:
        return await asyncio.wait_for(asyncio.open_connection(ticket.host, ticket.port), timeout_s)
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

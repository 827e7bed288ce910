"""TCP port forwards for native viewers (RDP, VNC, SSH, NoMachine...).

How a connection is bound to its ticket: the broker redeems the ticket at the gateway
(``POST /forwards``, the signed ticket is the authority) right after the user connects.
The gateway opens a listener on a free port of its range and answers the port; the broker
writes the gateway's host and that port into the descriptor (.rdp, .vnc...). The listener

- accepts connections only from the client address the broker saw (the ticket's
  ``client``; empty when the operator turned that off for clients behind changing NATs),
- stays open only while the ticket is valid (60 s by default): a viewer that reconnects
  during its security negotiation (xfreerdp falling back from NLA) is still let in,
- then closes; connections already carried go on until either side ends them.

The ticket was consumed at the redemption, so it cannot open a second port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from dataclasses import dataclass, field

from deskbroker.domain.tickets import Ticket
from deskbroker.gateway.relay import CHUNK, TargetDenied, open_target
from deskbroker.gateway.state import Busy, GatewayState

log = logging.getLogger("deskbroker.gateway")


@dataclass(eq=False)
class Forward:
    """One open listener and what it forwards to."""

    ticket: Ticket
    port: int
    server: asyncio.Server
    connections: int = 0
    refused: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class Forwarder:
    """Opens listeners in the configured port range, one per redeemed ticket."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.forwards: dict[int, Forward] = {}

    async def open(self, ticket: Ticket) -> Forward:
        """A listener for this ticket on a free port of the range; Busy when none is free."""
        low, high = self.state.settings.port_range
        ports = list(range(low, high + 1))
        # Start at a random place so that ports are not handed out in a guessable order.
        start = random.randrange(len(ports))  # not a secret, only a spread
        for port in ports[start:] + ports[:start]:
            if port in self.forwards:
                continue
            try:
                forward = await self._listen(ticket, port)
            except OSError:
                continue
            self.forwards[port] = forward
            delay = max(0.0, ticket.expires_at - time.time())
            asyncio.get_running_loop().call_later(delay, self._expire, forward)
            return forward
        raise Busy(f"no free port in the gateway's forward range {low}-{high}")

    async def _listen(self, ticket: Ticket, port: int) -> Forward:
        holder: list[Forward] = []

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._carry(holder[0], reader, writer)

        server = await asyncio.start_server(
            accept, self.state.settings.forward_host, port, reuse_address=True
        )
        forward = Forward(ticket=ticket, port=port, server=server)
        holder.append(forward)
        return forward

    def _expire(self, forward: Forward) -> None:
        forward.server.close()
        self.forwards.pop(forward.port, None)

    async def close(self) -> None:
        for forward in list(self.forwards.values()):
            self._expire(forward)
            for task in forward.tasks:
                task.cancel()

    async def _carry(
        self, forward: Forward, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        address = peer[0] if peer else ""
        ticket = forward.ticket
        if ticket.client and address != ticket.client:
            forward.refused += 1
            log.warning(
                "forward port %s: connection from %s refused (ticket of %s)",
                forward.port,
                address,
                ticket.client,
            )
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            forward.tasks.add(task)
        forward.connections += 1
        try:
            with self.state.metered(ticket, "forward") as meter:
                try:
                    target_reader, target_writer = await open_target(
                        ticket, self.state.settings.connect_timeout_s
                    )
                except TargetDenied as exc:
                    log.warning("forward port %s: %s", forward.port, exc)
                    return
                except OSError:
                    log.warning("forward to %s:%s: no answer", ticket.host, ticket.port)
                    return
                sock = target_writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

                async def pump(
                    src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool
                ) -> None:
                    while True:
                        data = await src.read(CHUNK)
                        if not data:
                            with contextlib.suppress(OSError):
                                dst.write_eof()
                            return
                        if up:
                            meter.up += len(data)
                        else:
                            meter.down += len(data)
                        dst.write(data)
                        await dst.drain()

                try:
                    await asyncio.gather(
                        pump(reader, target_writer, True), pump(target_reader, writer, False)
                    )
                except (OSError, ConnectionError):
                    pass
                finally:
                    target_writer.close()
        finally:
            writer.close()
            if task is not None:
                forward.tasks.discard(task)

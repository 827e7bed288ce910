"""What one gateway process holds: used ticket ids, open connections, drain mode."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

from deskbroker.domain.tickets import ReplayGuard, Ticket, TicketRefused, verify
from deskbroker.errors import DeskbrokerError
from deskbroker.gateway.accounting import Meter, Reporter
from deskbroker.gateway.settings import GatewaySettings


class Draining(DeskbrokerError):
    status = 503
    title = "Gateway draining"


class Busy(DeskbrokerError):
    status = 503
    title = "Gateway busy"


class GatewayState:
    """Checks tickets (signature, lifetime, gateway, single use) and counts connections."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.replay = ReplayGuard()
        self.reporter = Reporter(settings.broker_url, settings.key, settings.id)
        self.meters: set[Meter] = set()
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def admit(self, text: str, *, protocols: tuple[str, ...], client: str | None = None) -> Ticket:
        """The ticket's grant, consumed; refused (403) or unavailable (503) in words."""
        if self.draining:
            raise Draining("this gateway is draining for an upgrade; connect again")
        now = int(time.time())
        ticket = verify(text, self.settings.key, now=now, gateway_id=self.settings.id)
        if ticket.protocol not in protocols:
            raise TicketRefused(
                f"the ticket is for {ticket.protocol}, not for this kind of connection"
            )
        if client is not None and ticket.client and ticket.client != client:
            raise TicketRefused("the ticket was issued to another client address")
        if len(self.meters) >= self.settings.max_connections:
            raise Busy("this gateway carries as many connections as it may; try again")
        self.replay.consume(ticket, now=now)
        return ticket

    @contextmanager
    def metered(self, ticket: Ticket, kind: str) -> Iterator[Meter]:
        """Count one connection's bytes; report its start and its end to the broker."""
        meter = Meter(ticket, kind)
        self.meters.add(meter)
        self._idle.clear()
        self.reporter.submit(meter.report("gateway.open"))
        try:
            yield meter
        finally:
            meter.ended = time.time()
            self.meters.discard(meter)
            if not self.meters:
                self._idle.set()
            self.reporter.submit(meter.report("gateway.close"))

    def drain(self) -> None:
        """Refuse new connections; the open ones go on until they end."""
        self.draining = True

    async def drained(self, timeout_s: float) -> bool:
        """True once no connection is open (within ``timeout_s``)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

"""Byte and duration accounting of gateway connections, reported to a broker.

Each connection is a ``Meter``; when it opens and when it closes the gateway posts a
report to the broker's ``POST /api/v1/gateway/reports``, signed with the gateway's own
credential (an HMAC under a key derived from the shared gateway key, with a timestamp).
Reports are sent off the data path by one background task; a broker that does not answer
costs a few retries and a log line, never a stalled connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from deskbroker.domain.tickets import Ticket, report_key, sign

log = logging.getLogger("deskbroker.gateway")

REPORT_PATH = "/api/v1/gateway/reports"
SIGNATURE_HEADER = "X-Deskbroker-Gateway-Signature"


def signature_header(secret: str, body: bytes, now: int) -> str:
    """``t=<unix time>,sig=<HMAC>`` over ``<t>.<body>``: what the broker checks."""
    return f"t={now},sig={sign(report_key(secret), str(now).encode() + b'.' + body)}"


@dataclass(eq=False)
class Meter:
    """One connection's counters. ``up`` is client to desktop, ``down`` the other way."""

    ticket: Ticket
    kind: str
    started: float = field(default_factory=time.time)
    up: int = 0
    down: int = 0
    ended: float | None = None

    def report(self, event: str) -> dict[str, Any]:
        end = self.ended if self.ended is not None else time.time()
        return {
            "event": event,
            "ticket_id": self.ticket.ticket_id,
            "tenant_id": self.ticket.tenant_id,
            "user_id": self.ticket.user_id,
            "desktop_id": self.ticket.desktop_id,
            "protocol": self.ticket.protocol,
            "kind": self.kind,
            "started_at": round(self.started, 3),
            "duration_s": round(max(0.0, end - self.started), 3),
            "bytes_up": self.up,
            "bytes_down": self.down,
        }


class Reporter:
    """Posts reports to the broker from a queue, in the background."""

    def __init__(self, broker_url: str, secret: str, gateway_id: str) -> None:
        self._url = broker_url.rstrip("/") + REPORT_PATH if broker_url else ""
        self._secret = secret
        self._gateway_id = gateway_id
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10000)
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.failed = 0

    def submit(self, report: dict[str, Any]) -> None:
        if not self._url:
            return
        try:
            self._queue.put_nowait({"gateway_id": self._gateway_id, **report})
        except asyncio.QueueFull:
            self.failed += 1
            log.warning("gateway report queue full; a report is dropped")

    def start(self) -> None:
        if self._url and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until every queued report is sent (or given up)."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except TimeoutError:
            log.warning("gateway reports still queued after %s s", timeout_s)

    async def stop(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=10.0) as client:
            while True:
                report = await self._queue.get()
                try:
                    await self._send(client, report)
                finally:
                    self._queue.task_done()

    async def _send(self, client: httpx.AsyncClient, report: dict[str, Any]) -> None:
        body = json.dumps(report, separators=(",", ":")).encode()
        for attempt in range(3):
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: signature_header(self._secret, body, int(time.time())),
            }
            try:
                answer = await client.post(self._url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                log.warning("gateway report to %s failed: %s", self._url, exc)
            else:
                if answer.status_code < 300:
                    self.sent += 1
                    return
                log.warning(
                    "broker refused a gateway report: %s %s", answer.status_code, answer.text[:200]
                )
                if answer.status_code < 500:
                    break
            await asyncio.sleep(0.5 * (attempt + 1))
        self.failed += 1

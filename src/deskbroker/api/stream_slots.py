"""Places for event streams in this worker: a few per tenant, a few more in all.

An event stream holds its connection for minutes (its keep-alives stop load balancers
from closing it) and reads the event log twice a second. Counted with the other
requests, a few hundred streams a tenant administrator opens would take every place of
``InFlightLimit`` and turn every other tenant's logins away; so streams are left out of
that count (``api/overload.EXEMPT``) and take a place here instead, or get a 429.

Only the event loop touches the counts (the stream's route is ``async``): plain integers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from deskbroker.errors import TooManyRequests


class StreamSlots:
    """The event streams open in this worker, by tenant."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()

    def total(self) -> int:
        return sum(self._open.values())

    def take(self, tenant: str, *, per_tenant: int, in_all: int) -> None:
        """A place for one stream of ``tenant``; ``TooManyRequests`` when the tenant or
        the worker has none left. Given back with ``give_back`` (``HeldStream`` does)."""
        if self._open[tenant] >= per_tenant:
            raise TooManyRequests(
                f"this tenant already has {per_tenant} event streams open on this broker "
                "(DESKBROKER_EVENT_STREAMS_PER_TENANT); close one, or resume later with "
                "Last-Event-ID",
                retry_after=STREAM_RETRY_AFTER_S,
            )
        if self.total() >= in_all:
            raise TooManyRequests(
                f"this broker already serves {in_all} event streams "
                "(DESKBROKER_EVENT_STREAMS); try again later, or on another broker of the "
                "cluster, resuming with Last-Event-ID",
                retry_after=STREAM_RETRY_AFTER_S,
            )
        self._open[tenant] += 1

    def give_back(self, tenant: str) -> None:
        self._open[tenant] -= 1
        if self._open[tenant] <= 0:
            del self._open[tenant]


class HeldStream(StreamingResponse):
    """A streaming answer that gives its place back however it ends: finished, its
    client gone, or never started (a client that left before the first byte)."""

    def __init__(
        self, content: AsyncIterator[str], release: Callable[[], None], **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


STREAM_RETRY_AFTER_S = 30

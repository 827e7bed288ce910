"""How many session events one desktop's agent may report in a minute.

An agent token sits on its desktop, readable by whoever held the desktop, and every
event it reports writes rows (a session, its events, each fanned out to the tenant's
webhooks). A real agent reports a handful per session; a script that kept a copy of the
token could report a hundred a second. ``AgentEventLimiter`` counts each desktop's events
in a sliding window (the last minute) and refuses the one past the limit with a 429
before anything is read or written: one desktop's flood costs the broker a dictionary
look-up, and other desktops' agents are not touched.

The count lives in this broker worker's memory (``services/rate_window.py``), so the
limit is per worker process. Keys are desktop ids out of signed agent tokens, so no
stranger can add entries.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from deskbroker.errors import TooManyRequests, Unauthorized
from deskbroker.services.rate_window import SlidingWindows


class AgentEventLimiter(SlidingWindows):
    """Per-desktop sliding windows of accepted agent events."""

    def take(self, desktop_id: str, limit: int) -> float:
        """Count one event of ``desktop_id``, and return its instant (for ``give_back``);
        ``TooManyRequests`` (with ``retry_after``) when ``limit`` were counted in the
        last window already. A refused event is not counted: an agent that waits for
        Retry-After is heard then, however long a flood went on before."""
        instant, wait = self.admit(desktop_id, limit)
        if instant is None:
            raise TooManyRequests(
                f"this desktop's agent reported more than {limit} events in a minute "
                "(DESKBROKER_AGENT_EVENTS_PER_MINUTE); a desktop's agent reports a "
                "handful per session, so this one is refused and nothing was "
                f"recorded. Keep the event queued and send it again in {wait} s "
                "(Retry-After); if no one is flooding the broker with this desktop's "
                "token, look at what makes its sessions come and go this fast",
                retry_after=wait,
            )
        return instant

    def desktops(self) -> int:
        """How many desktops the limiter remembers (idle ones are forgotten)."""
        return self.keys()


@contextmanager
def counted(limiter: AgentEventLimiter, desktop_id: str, limit: int) -> Iterator[None]:
    """Count one event of ``desktop_id`` (or refuse it: ``TooManyRequests``) for the
    ``with`` block that records it; given back when the block finds the token is not
    the desktop's current one (``Unauthorized``): no event of it was recorded."""
    instant = limiter.take(desktop_id, limit)
    try:
        yield
    except Unauthorized:
        limiter.give_back(desktop_id, instant)
        raise

"""How many session events one desktop's agent may report in a minute.

An agent token sits on its desktop, readable by whoever held the desktop, and every
event it reports writes rows (a session, its events, each fanned out to the tenant's
webhooks). A real agent reports a handful per session; a script that kept a copy of the
token could report a hundred a second. ``AgentEventLimiter`` counts each desktop's events
in a sliding window (the last minute) and refuses the one past the limit with a 429
before anything is read or written: one desktop's flood costs the broker a dictionary
look-up, and other desktops' agents are not touched.

The count lives in this broker worker's memory, not in the database (counting in the
database would cost the write this is here to spare). So the limit is per worker
process: a cluster of K workers behind a load balancer takes K times the limit from one
desktop at most, which is still bounded. A restarted worker starts counting afresh.

Memory is bounded: a desktop's entry holds at most the limit's number of instants, and
a desktop silent for a whole window is forgotten. Keys are desktop ids out of signed
agent tokens, so no stranger can add entries.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from deskbroker.errors import TooManyRequests, Unauthorized

# "Per minute": the window the setting's name promises.
WINDOW_S = 60.0


class AgentEventLimiter:
    """Per-desktop sliding windows of accepted agent events, shared by the worker's
    request threads (routes run on a thread pool: every access holds the lock).

    ``clock`` returns seconds on a monotonic scale (a test gives its own)."""

    def __init__(
        self, *, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        # desktop id -> the instants (oldest first) of its events inside the window.
        self._taken: dict[str, deque[float]] = {}
        # When every idle desktop is next forgotten: a sweep of the whole map once per
        # window keeps it to the desktops heard from lately, at a cost spread thin.
        self._next_sweep = clock() + window_s

    def take(self, desktop_id: str, limit: int) -> float:
        """Count one event of ``desktop_id``, and return its instant (for ``give_back``);
        ``TooManyRequests`` (with ``retry_after``) when ``limit`` were counted in the
        last window already. A refused event is not counted: an agent that waits for
        Retry-After is heard then, however long a flood went on before."""
        with self._lock:
            now = self._clock()
            self._sweep(now)
            taken = self._taken.get(desktop_id)
            if taken is None:
                taken = self._taken[desktop_id] = deque()
            _drop_older(taken, now - self.window_s)
            if len(taken) >= limit:
                # The oldest event leaves the window first; its slot is the next free one.
                wait = max(1, math.ceil(taken[0] + self.window_s - now))
                raise TooManyRequests(
                    f"this desktop's agent reported more than {limit} events in a minute "
                    "(DESKBROKER_AGENT_EVENTS_PER_MINUTE); a desktop's agent reports a "
                    "handful per session, so this one is refused and nothing was "
                    f"recorded. Keep the event queued and send it again in {wait} s "
                    "(Retry-After); if no one is flooding the broker with this desktop's "
                    "token, look at what makes its sessions come and go this fast",
                    retry_after=wait,
                )
            taken.append(now)
            return now

    def give_back(self, desktop_id: str, instant: float) -> None:
        """Uncount an event taken at ``instant`` that turned out not to be this desktop's
        agent's (a token revoked or replaced), so that such a token, kept by someone who
        held the desktop, cannot use up the real agent's events."""
        with self._lock:
            taken = self._taken.get(desktop_id)
            if taken is None:
                return
            try:
                taken.remove(instant)
            except ValueError:  # already out of the window
                return
            if not taken:
                del self._taken[desktop_id]

    def desktops(self) -> int:
        """How many desktops the limiter remembers (idle ones are forgotten)."""
        with self._lock:
            return len(self._taken)

    def _sweep(self, now: float) -> None:
        # Called with the lock held.
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.window_s
        horizon = now - self.window_s
        for desktop_id in [
            d for d, taken in self._taken.items() if not taken or taken[-1] <= horizon
        ]:
            del self._taken[desktop_id]


def _drop_older(taken: deque[float], horizon: float) -> None:
    """Leave in ``taken`` only the instants after ``horizon``."""
    while taken and taken[0] <= horizon:
        taken.popleft()


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

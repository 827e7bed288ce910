"""Bounds on what one tenant's webhooks cost every other tenant.

The fan-out (``store/fanout.fan_out``) walks one cursor over every tenant's events and
writes one delivery row per webhook that takes an event: a tenant with hundreds of
webhooks and a flood of events fills the outbox and delays everyone's deliveries. So:

- a tenant has at most ``webhooks_per_tenant`` webhooks (``check_room``, counted in the
  create's own unit, the tenant's row locked, so two brokers cannot both take the last
  place);
- a webhook's test event (each one an event in the log, fanned out and posted) is
  accepted at most once per ``TEST_INTERVAL_S`` seconds (``TestPace``). The pace is kept
  in this process only: a cluster of N workers lets at most N through per interval,
  which bounds the flood without a table of its own.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from deskbroker.errors import Conflict, TooManyRequests
from deskbroker.services.context import BrokerContext
from deskbroker.store import webhooks as store
from deskbroker.store.db import Unit

SETTING_ENV = "DESKBROKER_WEBHOOKS_PER_TENANT"


def check_room(session: Unit, ctx: BrokerContext, tenant_id: str) -> None:
    """Refuse (409, in words) a new webhook of a tenant that has its
    ``webhooks_per_tenant`` already. Runs in the create's unit, before the insert."""
    cap = ctx.settings.webhooks_per_tenant
    used = store.count_locked(session, tenant_id)
    if used >= cap:
        # Over the cap when it was lowered after they were made: say how many must go.
        extra = used - cap + 1
        todo = "delete one first" if extra == 1 else f"delete {extra} first (the limit is {cap})"
        raise Conflict(
            f"this tenant already has {used} webhooks ({SETTING_ENV}); {todo}",
            reason="webhooks_per_tenant",
            limit=cap,
            used=used,
        )


# One test event per webhook per this many seconds: enough to check a receiver again
# after fixing it, too few to flood the outbox.
TEST_INTERVAL_S = 10.0
# The webhooks remembered at most. Every entry older than the interval is forgotten
# first; only if that many were tested within one interval is the oldest dropped (it may
# then be tested again a little early: memory stays bounded whatever the callers do).
MAX_REMEMBERED = 10_000


class TestPace:
    """When each webhook's last test event was accepted in this process; thread-safe
    (request handlers run on a thread pool)."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self,
        interval_s: float = TEST_INTERVAL_S,
        max_remembered: int = MAX_REMEMBERED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.max_remembered = max_remembered
        self._clock = clock
        self._lock = threading.Lock()
        # Oldest acceptance first: forgetting walks from the front.
        self._last: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._last)

    def take(self, webhook_id: str, name: str) -> None:
        """Accept a test event for the webhook now, or refuse it (``TooManyRequests``
        with ``retry_after``) while its last one is younger than the interval."""
        now = self._clock()
        with self._lock:
            last = self._last.get(webhook_id)
            if last is not None and now - last < self.interval_s:
                wait = max(1, math.ceil(self.interval_s - (now - last)))
                raise TooManyRequests(
                    f"a test event for webhook {name} was queued less than "
                    f"{self.interval_s:g} seconds ago; one test event per webhook is "
                    f"accepted every {self.interval_s:g} seconds: try again in {wait} s",
                    reason="webhook_test_pace",
                    retry_after=wait,
                )
            self._last.pop(webhook_id, None)
            self._last[webhook_id] = now
            self._forget(now)

    def _forget(self, now: float) -> None:
        # Under the lock. Entries are in acceptance order, so the stale ones lead.
        while self._last:
            oldest_id, oldest = next(iter(self._last.items()))
            if now - oldest < self.interval_s and len(self._last) <= self.max_remembered:
                break
            del self._last[oldest_id]


# This worker's pace; every request of the process shares it.
TEST_PACE = TestPace()

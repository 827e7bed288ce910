"""A whole-call deadline for a blocking cloud call, with the threads given up on capped.

The HTTP libraries under openstacksdk (keystoneauth, requests) bound each read of a
socket, not the call: a cloud that drips its answer one byte a second holds the calling
thread for ever. So a call runs on a helper thread that its caller waits for at most the
time left; past it, the caller goes on with an error and the helper is left to end by
itself (its socket's read timeout, or the remote closing). A helper that never ends
still holds one of ``MAX_HELPERS`` places, so such threads cannot pile up: once they are
all taken, calls are refused at once until one ends. One owner (a tenant: its centers'
drivers name it) holds at most ``MAX_PER_OWNER`` of them, so a tenant whose clouds drip
their answers cannot take every other tenant's places. The libvirt, vSphere and Redfish
drivers keep helpers of their own, built and shared out the same way.
"""

from __future__ import annotations

import contextvars
import threading
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from deskbroker.errors import NotSent
from deskbroker.write_guard import ensure_no_write_unit

T = TypeVar("T")

#: Helper threads (calls running, or given up on and not ended yet) in one process.
MAX_HELPERS = 64
#: ... of which one owner's calls hold at most this many.
MAX_PER_OWNER = 16


class Overdue(Exception):
    """The call did not end within the time it was given; it may still be running."""


class NoHelperLeft(NotSent):
    """Every helper place is held by a call that has not ended: the process waits for
    that many hung calls already."""


class Helpers:
    """A bounded set of helper threads for blocking calls with a deadline."""

    def __init__(self, limit: int, per_owner: int | None = None, remotes: str = "clouds") -> None:
        self.limit = limit
        self.per_owner = per_owner or limit
        # What the calls reach, as the refusals name it ("libvirt hosts", "BMCs").
        self.remotes = remotes
        self._places = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self._live = 0
        self._owned: Counter[str] = Counter()

    @property
    def live(self) -> int:
        """Helpers that have not ended, including those given up on."""
        with self._lock:
            return self._live

    def live_of(self, owner: str) -> int:
        """``owner``'s helpers that have not ended."""
        with self._lock:
            return self._owned[owner]

    def run(self, work: Callable[[], T], timeout_s: float, name: str, owner: str = "") -> T:
        """``work``'s result or exception, if it ends within ``timeout_s``; otherwise
        ``Overdue``. ``NoHelperLeft`` at once when every place is taken, or ``owner``
        (when named) holds its share of them."""
        # The write-unit guard is per thread: checked on the caller's, before handing off.
        ensure_no_write_unit(name)
        if owner:
            with self._lock:
                if self._owned[owner] >= self.per_owner:
                    raise NoHelperLeft(
                        f"{self.per_owner} calls to this tenant's {self.remotes} are still hanging"
                    )
                self._owned[owner] += 1
        if not self._places.acquire(blocking=False):
            self._disown(owner)
            raise NoHelperLeft(f"{self.limit} calls to {self.remotes} are still hanging")
        outcome: list[tuple[bool, object]] = []
        context = contextvars.copy_context()

        def helper() -> None:
            try:
                outcome.append((True, context.run(work)))
            except BaseException as exc:  # handed to the waiting caller
                outcome.append((False, exc))
            finally:
                with self._lock:
                    self._live -= 1
                self._places.release()
                self._disown(owner)

        with self._lock:
            self._live += 1
        worker = threading.Thread(target=helper, name=name, daemon=True)
        worker.start()
        worker.join(max(0.0, timeout_s))
        if not outcome:
            raise Overdue(name)
        ok, value = outcome[0]
        if not ok:
            assert isinstance(value, BaseException)
            raise value
        return value  # type: ignore[return-value]

    def _disown(self, owner: str) -> None:
        if owner:
            with self._lock:
                self._owned[owner] -= 1
                if self._owned[owner] <= 0:
                    del self._owned[owner]


#: The process's helpers for cloud calls (Keystone authentication and API calls).
CLOUD_CALLS = Helpers(MAX_HELPERS, MAX_PER_OWNER)

"""A whole-call deadline for a blocking cloud call, with the threads given up on capped.

The HTTP libraries under openstacksdk (keystoneauth, requests) bound each read of a
socket, not the call: a cloud that drips its answer one byte a second holds the calling
thread for ever. So a call runs on a helper thread that its caller waits for at most the
time left; past it, the caller goes on with an error and the helper is left to end by
itself (its socket's read timeout, or the remote closing). A helper that never ends
still holds one of ``MAX_HELPERS`` places, so such threads cannot pile up: once they are
all taken, calls are refused at once until one ends. One owner (a tenant: its centers'
drivers name it) holds at most ``MAX_PER_OWNER`` of them, so a tenant whose clouds drip
their answers cannot take every other tenant's places.

A share alone does not keep a place for everyone: a few tenants' hung calls, each within
its share, fill the pool together (four of 64, two of 32), and a tenant that has nothing
running gets nothing. So a reserve (a quarter of the places, by default) goes only to an
owner holding none yet: once the places in use reach ``limit - reserve``, an owner
holding one or more is refused as if at its share, and a tenant with no call out still
finds one, unless ``reserve`` other tenants with one each came first. The broker's own
calls (no owner) count as places in use but have no share and no reserve to keep to.
The libvirt, vSphere and Redfish drivers keep helpers of their own, built and shared
out the same way.
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
    """Every helper place is held by a call that has not ended, or every one this
    owner may take: the process waits for that many hung calls already."""


def _hanging(n: int, remotes: str) -> str:
    if n == 1:
        return f"1 call to this tenant's {remotes} is still hanging"
    return f"{n} calls to this tenant's {remotes} are still hanging"


class Helpers:
    """A bounded set of helper threads for blocking calls with a deadline."""

    def __init__(
        self,
        limit: int,
        per_owner: int | None = None,
        remotes: str = "clouds",
        reserve: int | None = None,
    ) -> None:
        self.limit = limit
        self.per_owner = per_owner or limit
        # Places only an owner holding none may take (see the module's docstring).
        self.reserve = max(0, min(limit, limit // 4 if reserve is None else reserve))
        # What the calls reach, as the refusals name it ("libvirt hosts", "BMCs").
        self.remotes = remotes
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
        (when named) holds its share of them, or holds some and only the reserve is
        left."""
        # The write-unit guard is per thread: checked on the caller's, before handing off.
        ensure_no_write_unit(name)
        self._take(owner)
        outcome: list[tuple[bool, object]] = []
        context = contextvars.copy_context()

        def helper() -> None:
            try:
                outcome.append((True, context.run(work)))
            except BaseException as exc:  # handed to the waiting caller
                outcome.append((False, exc))
            finally:
                self._give_back(owner)

        worker = threading.Thread(target=helper, name=name, daemon=True)
        try:
            worker.start()
        except BaseException:
            # No thread (the process is out of them): nothing holds the place.
            self._give_back(owner)
            raise
        worker.join(max(0.0, timeout_s))
        if not outcome:
            raise Overdue(name)
        ok, value = outcome[0]
        if not ok:
            assert isinstance(value, BaseException)
            raise value
        return value  # type: ignore[return-value]

    def _take(self, owner: str) -> None:
        """A place for one of ``owner``'s calls, or ``NoHelperLeft`` saying why not.
        Checked and counted under one lock, so two callers never both take the last
        place outside the reserve."""
        with self._lock:
            held = self._owned[owner] if owner else 0
            if owner and held >= self.per_owner:
                raise NoHelperLeft(_hanging(self.per_owner, self.remotes))
            if self._live >= self.limit:
                raise NoHelperLeft(f"{self.limit} calls to {self.remotes} are still hanging")
            if owner and held and self._live >= self.limit - self.reserve:
                raise NoHelperLeft(
                    f"{_hanging(held, self.remotes)}, and the rest of the broker's helpers "
                    "are kept for other tenants"
                )
            self._live += 1
            if owner:
                self._owned[owner] += 1

    def _give_back(self, owner: str) -> None:
        with self._lock:
            self._live -= 1
            if owner:
                self._owned[owner] -= 1
                if self._owned[owner] <= 0:
                    del self._owned[owner]


#: The process's helpers for cloud calls (Keystone authentication and API calls).
CLOUD_CALLS = Helpers(MAX_HELPERS, MAX_PER_OWNER)

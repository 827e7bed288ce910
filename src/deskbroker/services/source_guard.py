"""Bulkheads for the identity sources that answer over the network: a hung directory
may slow its own sign-ins, never the broker's.

Every call of a directory's driver (LDAP, Active Directory, NIS: the sources that
``provisions_users``) goes through ``SourceGuard.call``, which bounds two things per
source:

- **concurrency**: at most ``source_max_concurrent`` calls are in the directory at once;
  one more is refused at once (503, ``Retry-After``) instead of waiting for a thread,
  so the request threads shared by every tenant are never all parked on one directory;
- **repeated failures**: after ``source_breaker_failures`` timeouts or connection errors
  in a row the source's circuit opens, and calls are refused at once for
  ``source_breaker_cooldown_s``; then one call is let through as a probe (half-open):
  its success closes the circuit, its failure opens it for another cool-down.

A local source (a password hash in the broker's database) is not guarded: it does no
network call, and limiting it would only refuse ordinary sign-ins.

The state is per broker process: each broker of a cluster learns on its own that a
directory hangs, which costs each at most one round of timeouts per cool-down.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from deskbroker.config import Settings
from deskbroker.errors import DeskbrokerError, DirectoryUnavailable

if TYPE_CHECKING:
    from deskbroker.identity.base import IdentitySourceDriver
    from deskbroker.services.config_cache import SourceView

log = logging.getLogger("deskbroker.identity.guard")
T = TypeVar("T")

# Reasons a directory driver gives when the directory did not answer (as opposed to
# answering "no": a refused service account, a TLS requirement, a shadow map denied).
_NO_ANSWER = frozenset({"unreachable", "busy"})
# What a refused call is told to wait when the source is merely full.
BUSY_RETRY_S = 5


class SourceBusy(DirectoryUnavailable):
    """A directory already has as many sign-ins in flight as one source may hold."""

    title = "Directory busy"


class SourceSuspended(DirectoryUnavailable):
    """A directory's circuit is open: it failed repeatedly and is not asked for a while."""

    title = "Directory not answering"


def no_answer(exc: BaseException) -> bool:
    """Whether a driver's failure means the directory did not answer (a timeout, a
    refused or reset connection): what opens a circuit. A ``DeskbrokerError`` other than
    an unreachable directory is an answer (wrong password, locked account, a
    configuration the directory refuses)."""
    if isinstance(exc, (SourceBusy, SourceSuspended)):
        return False
    if isinstance(exc, DirectoryUnavailable):
        return exc.extra.get("reason", "unreachable") in _NO_ANSWER
    return not isinstance(exc, DeskbrokerError)


def reached_directory(exc: BaseException) -> bool:
    """Whether a failed sign-in cost a call to the directory (and so counts against the
    client address like a wrong password); a refusal by the guard cost nothing."""
    return isinstance(exc, DirectoryUnavailable) and not isinstance(
        exc, (SourceBusy, SourceSuspended)
    )


@dataclass
class _Bulkhead:
    """One source's slots and circuit. ``lock`` guards the circuit fields."""

    slots: threading.BoundedSemaphore
    lock: threading.Lock = field(default_factory=threading.Lock)
    failures: int = 0  # in a row
    open_until: float = 0.0  # monotonic; 0 while closed
    probing: bool = False  # a half-open probe is in flight


class SourceGuard:
    """Per-source concurrency limits and circuit breakers for one broker process."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = settings.source_max_concurrent
        self.threshold = settings.source_breaker_failures
        self.cooldown_s = settings.source_breaker_cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._sources: dict[str, _Bulkhead] = {}

    def _of(self, source_id: str) -> _Bulkhead:
        with self._lock:
            found = self._sources.get(source_id)
            if found is None:
                found = _Bulkhead(threading.BoundedSemaphore(self.limit))
                self._sources[source_id] = found
            return found

    def state(self, source_id: str) -> str:
        """``closed``, ``open`` or ``half_open`` (a probe may go, or is under way)."""
        head = self._of(source_id)
        with head.lock:
            if head.open_until == 0.0:
                return "closed"
            return "open" if self._clock() < head.open_until else "half_open"

    def run(self, source: SourceView, driver: IdentitySourceDriver, work: Callable[[], T]) -> T:
        """``work``, a blocking call of ``driver``: within the source's bounds when the
        source is a directory; a local source's call runs as it is."""
        if not driver.provisions_users:
            return work()
        return self.call(source.id, source.name, work)

    def call(self, source_id: str, name: str, work: Callable[[], T]) -> T:
        """``work`` (one blocking driver call of source ``source_id``, called ``name`` in
        logs) within the source's bounds; ``SourceBusy`` or ``SourceSuspended`` when it
        may not run now."""
        head = self._of(source_id)
        probe = self._admit(head)
        if not head.slots.acquire(blocking=False):
            if probe:
                with head.lock:
                    head.probing = False
            raise SourceBusy(
                f"The directory that checks this sign-in is answering slowly: {self.limit} "
                f"sign-ins are already waiting for it. Try again in {BUSY_RETRY_S} seconds.",
                reason="source_busy",
                retry_after=BUSY_RETRY_S,
            )
        try:
            result = work()
        except BaseException as exc:
            self._settle(head, name, failed=no_answer(exc))
            raise
        finally:
            head.slots.release()
        self._settle(head, name, failed=False)
        return result

    def _admit(self, head: _Bulkhead) -> bool:
        """Refuse while the circuit is open; returns whether this call is the probe."""
        with head.lock:
            if head.open_until == 0.0:
                return False
            left = head.open_until - self._clock()
            if left <= 0 and not head.probing:
                head.probing = True
                return True
        wait = max(1, math.ceil(left)) if left > 0 else BUSY_RETRY_S
        raise SourceSuspended(
            f"The directory that checks this sign-in did not answer the last {self.threshold} "
            "times, so the broker stops asking it for a while instead of keeping you waiting. "
            f"Try again in {wait} seconds; tell your administrator if it persists.",
            reason="source_suspended",
            retry_after=wait,
        )

    def _settle(self, head: _Bulkhead, name: str, *, failed: bool) -> None:
        with head.lock:
            was_open = head.open_until != 0.0
            head.probing = False
            if not failed:
                head.failures = 0
                head.open_until = 0.0
                if was_open:
                    log.info("identity source %s answers again: its circuit is closed", name)
                return
            head.failures += 1
            if was_open or head.failures >= self.threshold:
                head.open_until = self._clock() + self.cooldown_s
                log.warning(
                    "identity source %s did not answer %d times in a row: not asked for %g s",
                    name,
                    head.failures,
                    self.cooldown_s,
                )

"""Bulkheads for the identity sources that answer over the network: a hung directory
may slow its own sign-ins, never the broker's.

Every call of a directory's driver (LDAP, Active Directory, NIS: the sources that
``provisions_users``) goes through ``SourceGuard.call``, which bounds two things per
source:

- **concurrency**: at most ``source_max_concurrent`` calls are in the directory at once.
  One more waits for a slot only while the directory is answering (a call of it ended
  with an answer in the last ``ANSWERED_LATELY_S``), at most ``source_queue_wait_s`` and
  with at most ``source_max_concurrent`` calls waiting: a burst of sign-ins on a healthy
  directory takes turns instead of bouncing. A directory that has not answered lately
  (hung, dripping, just started) gets no line: the call is refused at once (503,
  ``Retry-After``), so the request threads shared by every tenant are never all parked
  on one directory;
- **repeated failures**: after ``source_breaker_failures`` timeouts or connection errors
  in a row the source's circuit opens, and calls are refused at once for
  ``source_breaker_cooldown_s``; then one call is let through as a probe (half-open):
  its success closes the circuit, its failure opens it for another cool-down.

Two bounds are wider than one source:

- **per tenant**: all the guarded sources of one tenant together have at most
  ``tenant_max_concurrent`` calls in flight, so five hung directories of one tenant
  cannot take the request threads every tenant shares;
- **a whole-call deadline**: the call runs on a helper thread that the request waits for
  at most ``source_call_deadline_s``. A client library's timeouts bound each read, not the
  call, and a server that drips one byte a second would otherwise hold the thread for
  ever; past the deadline the caller gets 503 and the failure counts towards the
  breaker. A helper given up on keeps its source's and tenant's slots until it ends (the
  library's own timeouts end it, or the remote closes), and at most
  ``source_threads_max`` helpers live in the process at once: calls beyond refuse at once.

OpenID Connect providers are guarded the same way as directories (discovery, token,
device and key calls).

A local source (a password hash in the broker's database) is not guarded: it does no
network call, and limiting it would only refuse ordinary sign-ins.

The state is per broker process: each broker of a cluster learns on its own that a
directory hangs, which costs each at most one round of timeouts per cool-down.
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from deskbroker.config import Settings
from deskbroker.errors import (
    DeskbrokerError,
    DirectoryUnavailable,
    IdentityProviderUnavailable,
    Unavailable,
)
from deskbroker.write_guard import ensure_no_write_unit

if TYPE_CHECKING:
    from deskbroker.identity.base import IdentitySourceDriver
    from deskbroker.services.config_cache import SourceView

log = logging.getLogger("deskbroker.identity.guard")
T = TypeVar("T")

# Reasons a directory driver gives when the directory did not answer (as opposed to
# answering "no": a refused service account, a TLS requirement, a shadow map denied).
_NO_ANSWER = frozenset({"unreachable", "busy", "deadline"})
# What a refused call is told to wait when the source is merely full.
BUSY_RETRY_S = 5
# A source one of whose calls ended with an answer this recently is answering: a call
# finding it full may wait its turn (a hung one's calls end with no answer, or not at all).
ANSWERED_LATELY_S = 2.0


class SourceBusy(DirectoryUnavailable):
    """A directory already has as many sign-ins in flight as one source may hold."""

    title = "Directory busy"


class TenantBusy(SourceBusy):
    """The tenant's sources together already have as many calls in flight as one tenant
    may hold, or the broker as many helper threads as it allows."""


class TenantCloudsBusy(Unavailable):
    """A tenant already has as many calls in flight to its clouds and directories, on
    request paths, as one tenant may hold."""

    title = "Too many calls waiting"


class SourceTimedOut(DirectoryUnavailable):
    """A directory or identity provider did not finish one call within the deadline."""

    title = "Directory not answering"


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
    if isinstance(exc, IdentityProviderUnavailable):
        return True
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
    answered_at: float = -math.inf  # monotonic: when a call last ended with an answer
    waiting: int = 0  # calls waiting for a slot (of the source or of its tenant)


class SourceGuard:
    """Per-source concurrency limits and circuit breakers for one broker process."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = settings.source_max_concurrent
        self.queue_wait_s = settings.source_queue_wait_s
        self.threshold = settings.source_breaker_failures
        self.cooldown_s = settings.source_breaker_cooldown_s
        self.tenant_limit = settings.tenant_max_concurrent
        self.deadline_s = settings.source_call_deadline_s
        self._clock = clock
        self._lock = threading.Lock()
        self._sources: dict[str, _Bulkhead] = {}
        self._tenants: dict[str, threading.BoundedSemaphore] = {}
        self._threads = threading.BoundedSemaphore(settings.source_threads_max)
        self._live = 0  # helper threads not ended yet, for the tests and /metrics

    @property
    def live_threads(self) -> int:
        """Helper threads that have not ended, including those given up on."""
        with self._lock:
            return self._live

    def _tenant(self, tenant_id: str) -> threading.BoundedSemaphore:
        with self._lock:
            found = self._tenants.get(tenant_id)
            if found is None:
                found = threading.BoundedSemaphore(self.tenant_limit)
                self._tenants[tenant_id] = found
            return found

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
        return self.call(source.id, source.name, work, tenant_id=source.tenant_id)

    def call(
        self, source_id: str, name: str, work: Callable[[], T], *, tenant_id: str | None = None
    ) -> T:
        """``work`` (one blocking driver call of source ``source_id``, called ``name`` in
        logs, of tenant ``tenant_id``) within the source's and the tenant's bounds and the
        whole-call deadline; ``SourceBusy``, ``TenantBusy`` or ``SourceSuspended`` when it
        may not run now, ``SourceTimedOut`` when it did not end in time."""
        # Checked here: the drivers' own write-unit guard is per thread, and the call
        # runs on a helper thread.
        ensure_no_write_unit(f"a call to identity source {name}")
        head = self._of(source_id)
        probe = self._admit(head)
        held: list[threading.BoundedSemaphore] = []
        try:
            self._take(
                head.slots,
                held,
                head,
                SourceBusy(
                    f"The directory that checks this sign-in is answering slowly: {self.limit} "
                    f"sign-ins are already waiting for it. Try again in {BUSY_RETRY_S} seconds.",
                    reason="source_busy",
                    retry_after=BUSY_RETRY_S,
                ),
            )
            if tenant_id is not None:
                self._take(
                    self._tenant(tenant_id),
                    held,
                    head,
                    TenantBusy(
                        f"The directories of this tenant are answering slowly: {self.tenant_limit} "
                        f"sign-ins are already waiting for them. Try again in {BUSY_RETRY_S} "
                        "seconds.",
                        reason="tenant_busy",
                        retry_after=BUSY_RETRY_S,
                    ),
                )
            self._take(
                self._threads,
                held,
                None,
                TenantBusy(
                    "The broker is already waiting for as many directory and identity provider "
                    f"answers as it allows. Try again in {BUSY_RETRY_S} seconds.",
                    reason="broker_busy",
                    retry_after=BUSY_RETRY_S,
                ),
            )
        except SourceBusy:
            for slots in held:
                slots.release()
            if probe:
                with head.lock:
                    head.probing = False
            raise
        try:
            result = self._within_deadline(name, work, held)
        except BaseException as exc:
            self._settle(head, name, failed=no_answer(exc))
            raise
        self._settle(head, name, failed=False)
        return result

    def tenant_call(self, tenant_id: str, what: str, work: Callable[[], T]) -> T:
        """``work``, a blocking call to one of the tenant's centers on a request path
        (``what`` names it to the user), counted against the tenant's cap shared with
        its directories: a tenant whose clouds hang holds at most that many request
        threads. The call keeps its own deadline (the center's ``timeout_s``)."""
        slots = self._tenant(tenant_id)
        if not slots.acquire(blocking=False):
            raise TenantCloudsBusy(
                f"Cannot {what} now: {self.tenant_limit} requests of this tenant are already "
                f"waiting for its clouds and directories. Try again in {BUSY_RETRY_S} seconds.",
                reason="tenant_busy",
                retry_after=BUSY_RETRY_S,
            )
        try:
            return work()
        finally:
            slots.release()

    def _take(
        self,
        slots: threading.BoundedSemaphore,
        held: list[threading.BoundedSemaphore],
        head: _Bulkhead | None,
        refusal: SourceBusy,
    ) -> None:
        """One of ``slots``, or ``refusal``: at once, unless ``head``'s source is answering
        and its line has room, in which case after waiting its turn for a while."""
        if not slots.acquire(blocking=False):
            if head is None or not self._queue(head):
                raise refusal
            try:
                got = slots.acquire(timeout=self.queue_wait_s)
            finally:
                with head.lock:
                    head.waiting -= 1
            if not got:
                raise refusal
        held.append(slots)

    def _within_deadline(
        self, name: str, work: Callable[[], T], held: list[threading.BoundedSemaphore]
    ) -> T:
        """``work`` on a helper thread, waited for at most the deadline. The helper
        releases ``held`` when it ends, so a call given up on still counts against its
        source, its tenant and the process until it does."""
        outcome: list[tuple[bool, object]] = []
        context = contextvars.copy_context()  # the request's log context goes along

        def helper() -> None:
            try:
                outcome.append((True, context.run(work)))
            except BaseException as exc:  # handed to the waiting caller
                outcome.append((False, exc))
            finally:
                for slots in held:
                    slots.release()
                with self._lock:
                    self._live -= 1

        with self._lock:
            self._live += 1
        worker = threading.Thread(target=helper, name=f"source-call {name}", daemon=True)
        worker.start()
        worker.join(self.deadline_s)
        if not outcome:
            log.warning(
                "identity source %s did not finish a call within %g s: given up on",
                name,
                self.deadline_s,
            )
            raise SourceTimedOut(
                f"The directory or identity provider that checks this sign-in did not "
                f"answer within {self.deadline_s:g} seconds. Try again later; tell your "
                "administrator if it persists.",
                reason="deadline",
                retry_after=BUSY_RETRY_S,
            )
        ok, value = outcome[0]
        if not ok:
            assert isinstance(value, BaseException)
            raise value
        return value  # type: ignore[return-value]

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

    def _queue(self, head: _Bulkhead) -> bool:
        """Whether a call finding the source (or its tenant) full may wait for a slot: the
        source is answering, its circuit closed, and fewer calls than its limit wait."""
        if self.queue_wait_s <= 0:
            return False
        with head.lock:
            answering = (
                head.open_until == 0.0 and self._clock() - head.answered_at <= ANSWERED_LATELY_S
            )
            if not answering or head.waiting >= self.limit:
                return False
            head.waiting += 1
            return True

    def _settle(self, head: _Bulkhead, name: str, *, failed: bool) -> None:
        with head.lock:
            was_open = head.open_until != 0.0
            head.probing = False
            if not failed:
                head.answered_at = self._clock()
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

"""Events out, the delivery: the event log fanned out into the outbox, and its due
deliveries posted, signed, from threads of their own.

The ``webhooks`` job (one for the cluster, leased like every job) fans out the events
since the last run, batch after batch until it is caught up (``store/fanout.py``: one
cursor serves every tenant, so it must keep ahead of all their events together), and
claims due deliveries by lease, then returns: the posts run on
this module's pool (``webhook_workers`` threads), never on an engine worker or in a
request, each with no transaction open. ``webhook_timeout_s`` is the deadline of a whole
post (connect, send, the answer's head), so a receiver that never answers, or drips its
answer a byte at a time, holds a thread that long and no longer, and at most
``webhook_per_target`` threads at once; one tenant's deliveries hold at most
``webhook_per_tenant`` of them, so every other tenant's find a free thread. Logins,
connects and the engine's other work do not wait for any of it. A thread that finishes
a delivery claims the next due ones at once, so a backlog drains without waiting for
the job's next run. Each fan-out first switches off the webhooks whose setter may no
longer read events (``services/webhooks.py``), in the fan-out's transaction; the
``webhook_setters`` job keeps what the fan-out knows of directory setters current.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta

import h11
import httpx

from deskbroker import outbound_http, write_guard
from deskbroker.domain import webhooks as rules
from deskbroker.engine.drivers import DriverCache
from deskbroker.outbound import OutboundRefused
from deskbroker.services import webhook_setters
from deskbroker.services import webhooks as vetting
from deskbroker.services.context import BrokerContext
from deskbroker.store import fanout
from deskbroker.store import webhooks as store
from deskbroker.store.db import Unit
from deskbroker.store.tables import utcnow

log = logging.getLogger("deskbroker.webhooks")

USER_AGENT = "deskbroker-webhooks/1"
# Finished deliveries are purged at most this often (seconds).
PURGE_EVERY_S = 3600.0
# One run of the job fans out batch after batch for at most this long (seconds) while
# it is behind; the job, due again at once, goes on after the engine's other work.
FANOUT_BUDGET_S = 2.0
# A webhook whose queue is full is told of in its tenant's log at most this often.
DROPPED_NOTICE_EVERY_S = 60.0


def body_of(payload: dict[str, object]) -> bytes:
    """The exact bytes posted and signed: compact JSON with sorted keys."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def per_tenant(workers: int, per_target: int, setting: int | None) -> int:
    """Deliveries of one tenant in flight at once: the setting, or else half the
    threads, so one tenant never holds them all while others wait; but room beside one
    receiver of the tenant at its own bound (a dead one) for its other webhooks, while
    one thread is left to other tenants."""
    if setting is not None:
        return setting
    return max(1, workers // 2, min(workers - 1, per_target + 1))


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from (httpx wraps httpcore, which wraps the socket's,
    TLS's or h11's error), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


# The broker's words for a failed post, by what failed underneath (the first match wins).
_CAUSE_WORDS: tuple[tuple[type[BaseException], str], ...] = (
    (h11.RemoteProtocolError, "the receiver does not speak HTTP (its answer is no HTTP response)"),
    (ssl.SSLCertVerificationError, "the receiver's TLS certificate is not trusted for its name"),
    (ssl.SSLError, "the TLS handshake with the receiver failed"),
    (socket.gaierror, "the receiver's name does not resolve"),
    (ConnectionRefusedError, "connection refused"),
    (ConnectionResetError, "the receiver reset the connection"),
    (BrokenPipeError, "the receiver closed the connection while the event was sent"),
)
# And by the kind of httpx error, when no cause above says more.
_ERROR_WORDS: tuple[tuple[type[httpx.HTTPError], str], ...] = (
    (httpx.ProxyError, "the HTTP proxy refused the connection"),
    (httpx.ConnectError, "no connection to the receiver"),
    (httpx.RemoteProtocolError, "the receiver closed the connection without answering"),
    (httpx.ReadError, "the connection broke before the receiver answered"),
    (httpx.WriteError, "the connection broke while the event was sent"),
    (httpx.UnsupportedProtocol, "the URL's scheme is neither http nor https"),
    (httpx.LocalProtocolError, "the request could not be sent"),
)


def failure_words(exc: httpx.HTTPError, timeout_s: float) -> str:
    """Why a post failed, in the broker's own fixed words: never the exception's text,
    which quotes the receiver (an SSH server's banner, as an "illegal status line") or
    names from its certificate, and which a tenant administrator reads in the
    delivery's ``last_error`` after aiming a webhook at an internal service."""
    causes = list(_causes(exc))
    if any(isinstance(cause, httpx.TimeoutException | TimeoutError) for cause in causes):
        return f"no answer within {timeout_s:g} s"
    for cause in causes:
        for kind, words in _CAUSE_WORDS:
            if isinstance(cause, kind):
                return words
    for error_kind, words in _ERROR_WORDS:
        if isinstance(exc, error_kind):
            return words
    return f"the post failed ({type(exc).__name__})"  # the library's class, not the remote's


def recheck_setters(ctx: BrokerContext, drivers: DriverCache, target_id: str, now: datetime) -> str:
    """The ``webhook_setters`` job: the directory users who set up webhooks looked up in
    their directory again, so the fan-out vets them on what it says now
    (``services/webhook_setters.py``). Runs on an engine worker, no transaction open
    while a directory is asked."""
    return webhook_setters.recheck_setters(ctx).summary()


class Dispatcher:
    """This node's webhook deliveries: the job's handler and the threads that post."""

    def __init__(self, ctx: BrokerContext, owner: str) -> None:
        settings = ctx.settings
        self.ctx = ctx
        self.owner = owner
        self.workers = settings.webhook_workers
        self.per_tenant = per_tenant(
            settings.webhook_workers, settings.webhook_per_target, settings.webhook_per_tenant
        )
        # The lease outlives a post that runs into every timeout (connect, send, read).
        self.ttl_s = max(settings.lease_ttl_s, settings.webhook_timeout_s * 4)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="webhook")
        self._running: set[Future[None]] = set()
        self._lock = threading.Lock()
        self._purged = 0.0
        # Events each full webhook did not get since its last notice, and when that was.
        self._dropped: dict[str, fanout.Dropped] = {}
        self._noticed: dict[str, float] = {}
        # Each webhook's queue as last counted, for a second (``fanout.Rooms``).
        self._rooms = fanout.Rooms()
        self._client = httpx.Client(
            # Every connection checked against the outbound policy on the socket reached.
            transport=outbound_http.guarded_transport(),
            # Per operation; the whole post is bounded by outbound_http.deadline() too.
            timeout=httpx.Timeout(settings.webhook_timeout_s),
            follow_redirects=False,  # a redirect is a failure, never a second target
            headers={"User-Agent": USER_AGENT},
        )
        self._closed = False

    def close(self, wait: bool = True) -> None:
        self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=True)
        self._client.close()

    def busy(self) -> int:
        with self._lock:
            self._running = {f for f in self._running if not f.done()}
            return len(self._running)

    # --- the job ---------------------------------------------------------------------
    def run(self, ctx: BrokerContext, drivers: DriverCache, target_id: str, now: datetime) -> str:
        """The ``webhooks`` job: fan out until caught up (or for ``FANOUT_BUDGET_S``),
        then start what is due. Quick: it posts nothing. Each batch is a transaction of
        its own; a webhook whose setter may no longer read events is switched off first,
        in the batch's transaction, so it gets none of the events that batch fans out."""

        def vet(session: Unit) -> set[str]:
            return vetting.switch_off_unvouched(ctx, session)

        made = walked = batches = 0
        until = time.monotonic() + FANOUT_BUDGET_S
        while True:
            # The vetting reads the roles' grants from the per-node configuration cache,
            # as held inside the unit: a role changed on another node counts from here.
            ctx.cache.current(ctx.db)
            with ctx.db.write() as session:
                batch = fanout.fan_out(
                    session,
                    utcnow(),
                    ctx.settings.webhook_settle_s,
                    backlog=ctx.settings.webhook_backlog,
                    rooms=self._rooms,
                    vet=vet,
                )
                owed, noticed = self._notices(session, batch.dropped)
            self._dropped, self._noticed = owed, noticed
            made, walked, batches = made + batch.made, walked + batch.walked, batches + 1
            # Behind and out of time: the next run (at once, the job being due) goes on.
            if batch.caught_up or time.monotonic() >= until:
                break
        started = self.pump()
        self._purge()
        return f"{walked} events in {batches} batches: {made} deliveries queued, {started} started"

    def _notices(
        self, session: Unit, dropped: dict[str, fanout.Dropped]
    ) -> tuple[dict[str, fanout.Dropped], dict[str, float]]:
        """What webhooks with full queues did not get, told in their tenants' logs: at most
        one event per webhook per ``DROPPED_NOTICE_EVERY_S``, counting all since the last
        (a flood would otherwise add an event to the log with every batch). Returns what
        this node remembers once the batch commits (nothing is changed before).

        Kept in this node's memory: a node that stops, or loses the job's lease, before
        its next notice takes the count of what it dropped since its last with it (the
        events are still in the log), and nodes that take the job in turns tell of a
        webhook once a minute each."""
        clock = time.monotonic()
        owed = {hook: replace(counted) for hook, counted in self._dropped.items()}
        for hook_id, more in dropped.items():
            if hook_id in owed:
                owed[hook_id].add(more)
            else:
                owed[hook_id] = replace(more)
        noticed = dict(self._noticed)
        for hook_id in list(owed):
            if clock - noticed.get(hook_id, float("-inf")) < DROPPED_NOTICE_EVERY_S:
                continue
            backlog = self.ctx.settings.webhook_backlog
            vetting.note_dropped(session, hook_id, owed.pop(hook_id), backlog)
            noticed[hook_id] = clock
        # The quiet ones forgotten, so the map does not grow with every webhook ever full.
        quiet = [h for h, at in noticed.items() if clock - at > 2 * DROPPED_NOTICE_EVERY_S]
        for hook_id in quiet:
            if hook_id not in owed:
                del noticed[hook_id]
        return owed, noticed

    def pump(self, finishing: bool = False) -> int:
        """Claim as many due deliveries as this node has free threads, and post them;
        ``finishing``: called by a delivery thread about to be free (its own slot counts)."""
        if self._closed:
            return 0
        free = self.workers - self.busy() + (1 if finishing else 0)
        if free <= 0:
            return 0
        with self.ctx.db.write() as session:
            claimed = store.claim(
                session,
                owner=self.owner,
                now=utcnow(),
                ttl_s=self.ttl_s,
                per_webhook=self.ctx.settings.webhook_per_target,
                per_tenant=self.per_tenant,
                limit=free,
            )
        for delivery in claimed:
            try:
                future = self._pool.submit(self._deliver, delivery)
            except RuntimeError:  # shut down meanwhile: the lease runs out, another posts
                return 0
            with self._lock:
                self._running.add(future)
        return len(claimed)

    def _purge(self) -> None:
        if time.monotonic() - self._purged < PURGE_EVERY_S:
            return
        self._purged = time.monotonic()
        before = utcnow() - timedelta(days=self.ctx.settings.webhook_retention_days)
        with self.ctx.db.write() as session:
            store.purge_finished(session, before)

    # --- one post --------------------------------------------------------------------
    def _deliver(self, delivery: store.Claimed) -> None:
        try:
            status, error = self.post(delivery)
            self._record(delivery, status, error)
        except Exception:
            log.exception("webhook delivery %s failed unexpectedly", delivery.id)
            return
        self.pump(finishing=True)

    def post(self, delivery: store.Claimed) -> tuple[int | None, str]:
        """Post one delivery with no transaction open; its HTTP status and, when it
        failed, why. The secret is opened here and goes nowhere but into the HMAC."""
        # The write guard: a post inside a write unit would hold its locks for as long
        # as the receiver takes to answer.
        write_guard.ensure_no_write_unit("a webhook delivery")
        body = body_of(delivery.payload)
        stamp = int(time.time())
        secret = self.ctx.secrets.open(delivery.secret_sealed)
        headers = {
            "Content-Type": "application/json",
            rules.EVENT_ID_HEADER: str(delivery.event_id),
            rules.TIMESTAMP_HEADER: str(stamp),
            rules.SIGNATURE_HEADER: rules.signature(secret, stamp, body),
        }
        try:
            # Streamed and not read: a receiver cannot make the broker hold a large answer.
            # Under a deadline: a receiver dripping its answer's head beats every per-read
            # timeout, and would hold this thread (and the tenant's slot) for ever.
            with (
                outbound_http.deadline(self.ctx.settings.webhook_timeout_s),
                self._client.stream("POST", delivery.url, content=body, headers=headers) as r,
            ):
                status = r.status_code
        except OutboundRefused as exc:
            return None, str(exc)
        except httpx.HTTPError as exc:
            # The detail (which may quote the receiver) for the operator's log only; the
            # delivery, which the tenant reads, keeps the broker's words.
            log.info(
                "webhook %s: event %s: post failed: %s: %.300r",
                delivery.webhook_id,
                delivery.event_id,
                type(exc).__name__,
                str(exc),
            )
            return None, failure_words(exc, self.ctx.settings.webhook_timeout_s)
        if 200 <= status < 300:
            return status, ""
        return status, f"the receiver answered HTTP {status}"

    def _record(self, delivery: store.Claimed, status: int | None, error: str) -> None:
        settings = self.ctx.settings
        now = utcnow()
        delivered = not error
        attempts = delivery.attempts + 1
        retry_at = None
        if not delivered and attempts < delivery.max_attempts:
            wait = rules.next_attempt(
                attempts, settings.webhook_retry_base_s, settings.webhook_retry_cap_s
            )
            retry_at = now + timedelta(seconds=wait)
        if not delivered:
            # The URL is the tenant's own; the secret never leaves post().
            log.info(
                "webhook %s: event %s attempt %d failed: %s",
                delivery.webhook_id,
                delivery.event_id,
                attempts,
                error,
            )
        with self.ctx.db.write() as session:
            store.record(
                session,
                delivery,
                owner=self.owner,
                now=now,
                status=status,
                error=error,
                delivered=delivered,
                retry_at=retry_at,
            )

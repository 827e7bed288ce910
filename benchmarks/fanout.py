#!/usr/bin/env python3
"""Fan-out under one tenant's flood: how long another tenant's event waits for its webhook.

One cursor fans the event log out to every tenant's webhooks, so a tenant that writes
events faster than the fan-out walks them holds every other tenant back. Measured on a
real database with the engine's own ``webhooks`` job (``engine/webhooks.Dispatcher``), run
once per ``--poll-s`` as the engine runs it:

1. **walk**: the flood tenant writes ``--flood`` events no webhook takes (connects), then
   the quiet tenant one sign-in its webhook takes (a real HTTP receiver on 127.0.0.1).
   Printed: ``quiet_delay_s`` (from the sign-in to its arrival at the receiver),
   ``job_runs`` it took and ``walk_events_per_s`` (events fanned out per second of the
   job's own work).
2. **queue**: the flood tenant writes ``--flood`` sign-ins its webhook (to a port where
   nothing listens) takes. Printed: ``queued`` and ``dropped`` deliveries (past the
   backlog bound, a webhook's events are dropped and told of in its tenant's log),
   ``queue_s``, and ``claim_ms_p50`` / ``claim_ms_max``: a claim of due
   deliveries with that backlog pending (every finished post claims again), against
   ``claim_ms_p50_idle``, the same with no backlog.

Usage::

    .venv/bin/python benchmarks/fanout.py --json
    .venv/bin/python benchmarks/fanout.py --json --db postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cloud import broker, emit  # a sibling script
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.webhooks import Dispatcher
from deskbroker.services.context import BrokerContext
from deskbroker.store import webhooks as webhook_rows
from deskbroker.store.tables import Event, Tenant, Webhook, WebhookDelivery, utcnow

DEAD = "http://127.0.0.1:9/hook"  # nothing listens: every post fails and is retried later


class Receiver:
    """An HTTP receiver on 127.0.0.1 that notes when each event id arrives."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.lock = threading.Lock()

    @contextmanager
    def running(self) -> Iterator[str]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.arrived.setdefault(str(json.loads(body)["id"]), time.monotonic())
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/hook"
        finally:
            server.shutdown()
            server.server_close()


def _tenant(ctx: BrokerContext, name: str) -> str:
    with ctx.db.write() as session:
        found = session.scalar(select(Tenant.id).where(Tenant.name == name))
        if found is not None:
            return str(found)
        row = Tenant(name=name)
        session.add(row)
        session.flush()
        return row.id


def _webhook(ctx: BrokerContext, tenant_id: str, url: str) -> str:
    with ctx.db.write() as session:
        row = Webhook(
            tenant_id=tenant_id,
            name=f"bench-{len(url)}-{time.monotonic_ns()}",
            url=url,
            kinds=["login"],
            secret_sealed=ctx.secrets.seal("benchmark-webhook-secret-0123"),
        )
        session.add(row)
        session.flush()
        return row.id


def _events(ctx: BrokerContext, tenant_id: str, kind: str, count: int) -> int:
    """``count`` events in the tenant's log, as its agents and sign-ins write them; the
    newest id."""
    with ctx.db.write() as session:
        for start in range(0, count, 5000):
            rows = [{"tenant_id": tenant_id, "kind": kind, "actor": "bench"}] * min(
                5000, count - start
            )
            session.execute(insert(Event), rows)
        return int(session.scalar(select(func.max(Event.id))) or 0)


def _count(ctx: BrokerContext, *where: Any) -> int:
    with ctx.db.read() as session:
        return int(
            session.scalar(select(func.count()).select_from(WebhookDelivery).where(*where)) or 0
        )


def _claims(ctx: BrokerContext, times: int = 20) -> list[float]:
    """Milliseconds of ``times`` claims of due deliveries, each its own transaction, as a
    delivery thread's claim is."""
    took: list[float] = []
    for _ in range(times):
        began = time.perf_counter()
        with ctx.db.write() as session:
            webhook_rows.claim(
                session,
                owner="bench-claim",
                now=utcnow(),
                ttl_s=0.001,  # leased for a moment: the next claim sees it free
                per_webhook=2,
                per_tenant=3,
                limit=4,
            )
        took.append((time.perf_counter() - began) * 1000)
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flood", type=int, default=20000, help="events the flood writes")
    parser.add_argument("--poll-s", type=float, default=1.0, help="the job's period")
    parser.add_argument("--db", default=None, help="database URL (default: SQLite)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    with broker(args.db, webhook_settle_s=0.5) as ctx:
        dispatcher = Dispatcher(ctx, "bench")
        drivers = DriverCache(ctx)
        work_s = 0.0

        def run() -> None:
            nonlocal work_s
            started = time.monotonic()
            dispatcher.run(ctx, drivers, "", utcnow())
            took = time.monotonic() - started
            work_s += took
            time.sleep(max(0.0, args.poll_s - took))

        receiver = Receiver()
        quiet = _tenant(ctx, "default")
        flood = _tenant(ctx, "flood")
        with receiver.running() as url:
            _webhook(ctx, quiet, url)
            flood_hook = _webhook(ctx, flood, DEAD)
            run()  # the cursor starts at the newest event

            # 1. walk: events no webhook takes, then the quiet tenant's sign-in.
            _events(ctx, flood, "connect", args.flood)
            signed_in = str(_events(ctx, quiet, "login", 1))
            since, runs, work_s = time.monotonic(), 0, 0.0
            while signed_in not in receiver.arrived:
                run()
                runs += 1
                if time.monotonic() - since > 600:
                    raise SystemExit("the quiet tenant's sign-in did not arrive in 10 minutes")
            quiet_delay = receiver.arrived[signed_in] - since
            walk_rate = (args.flood + 1) / work_s if work_s else 0.0

            idle_claims = _claims(ctx)
            # 2. queue: sign-ins the flood tenant's dead webhook takes.
            newest = _events(ctx, flood, "login", args.flood)
            started, work_s = time.monotonic(), 0.0
            while True:
                run()
                with ctx.db.read() as session:
                    if webhook_rows.horizon(session) >= newest:
                        break
                if time.monotonic() - started > 600:
                    raise SystemExit("the flood was not fanned out in 10 minutes")
            queue_s = work_s
            queued = _count(ctx, WebhookDelivery.webhook_id == flood_hook)
            # Dropped: the rest (each told of in the log, at most once a minute per webhook).
            dropped = args.flood - queued
            claims = _claims(ctx)
        dispatcher.close(wait=True)  # its threads finish before the database goes

    emit(
        {
            "backend": "postgresql" if args.db and args.db.startswith("postgresql") else "sqlite",
            "flood_events": args.flood,
            "poll_s": args.poll_s,
            "quiet_delay_s": round(quiet_delay, 2),
            "job_runs": runs,
            "walk_events_per_s": round(walk_rate),
            "queued": queued,
            "dropped": dropped,
            "queue_s": round(queue_s, 2),
            "claim_ms_p50_idle": round(statistics.median(idle_claims), 2),
            "claim_ms_p50": round(statistics.median(claims), 2),
            "claim_ms_max": round(max(claims), 2),
        },
        args.json,
        "Fan-out under one tenant's flood",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Webhooks: login latency with no webhook, then with a dead receiver and a flaky one
subscribed to logins; and how fast the flaky receiver gets every login event.

A real broker (``deskbroker serve``, engine on) on 127.0.0.1, seeded as in
``benchmarks/login.py``. Every user logs in once (claiming a desktop); then the logins
are measured on a quiet broker, then again after two webhooks for ``login`` were saved:
one to a tarpit (accepts, never answers) and one to a receiver that answers 500 to every
other delivery. Reported: both rounds' latencies, and from the end of the second round,
the seconds until the flaky receiver holds every login event of that round (after
deduplication by id), with the attempts it took.

Usage::

    .venv/bin/python benchmarks/webhooks.py --json
    .venv/bin/python benchmarks/webhooks.py --json --db postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from login import DEFAULT_PG, BenchError, expect, prepared_broker, seed  # a sibling script
from tarpit import Tarpit, figures, login_round  # a sibling script

SECRET = "benchmark-webhook-secret-0123"


class FlakyReceiver:
    """Answers 500 to every other delivery and 200 to the rest; keeps the ids it took."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.attempts = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.attempts += 1
                    ok = receiver.attempts % 2 == 0
                    if ok:
                        receiver.ids.add(str(json.loads(body)["id"]))
                self.send_response(200 if ok else 500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def _login_ids(http: httpx.AsyncClient, auth: dict[str, str], after: int) -> set[str]:
    page = expect(
        await http.get("/api/v1/admin/events?kind=login&limit=1000", headers=auth), 200, "events"
    )
    return {str(e["id"]) for e in page["items"] if int(e["id"]) > after}


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        token = await seed(http, args)
        auth = {"Authorization": f"Bearer {token}"}
        names = [f"bench-user-{i:05d}" for i in range(args.users)]
        await login_round(http, names, args.concurrency)  # every user claims a desktop
        quiet, errors = await login_round(http, names, args.concurrency)
        pit, flaky = Tarpit(), FlakyReceiver()
        try:
            for name, target in (("dead", f"http://127.0.0.1:{pit.port}/"), ("flaky", flaky.url)):
                expect(
                    await http.post(
                        "/api/v1/admin/webhooks",
                        headers=auth,
                        json={"name": name, "url": target, "kinds": ["login"], "secret": SECRET},
                    ),
                    201,
                    f"save the {name} webhook",
                )
            newest = expect(
                await http.get("/api/v1/admin/events?limit=1", headers=auth), 200, "events"
            )["items"][0]["id"]
            loud, failed = await login_round(http, names, args.concurrency)
            errors += failed
            ended = time.perf_counter()
            expected = await _login_ids(http, auth, int(newest))
            deadline = time.monotonic() + args.timeout / 2
            while not expected <= flaky.ids:
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"{len(expected - flaky.ids)} login events never reached the receiver"
                    )
                await asyncio.sleep(0.05)
            drained_s = time.perf_counter() - ended
            held = len(pit.held)
        finally:
            pit.close()
            flaky.close()
    return {
        "without_webhooks": figures(quiet),
        "with_dead_and_flaky_webhooks": figures(loud),
        "events": len(expected),
        "all_delivered_after_s": round(drained_s, 2),
        "deliveries_per_s": round(len(expected) / drained_s, 1) if drained_s else None,
        "receiver_attempts": flaky.attempts,
        "dead_receiver_connections": held,
        "login_errors": len(errors),
        "first_errors": errors[:3],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with prepared_broker(args, "deskbroker-webhooks-") as (broker, backend):
        try:
            result = asyncio.run(asyncio.wait_for(measure(broker.url, args), args.timeout))
        except TimeoutError as exc:
            raise BenchError(f"the benchmark took longer than {args.timeout} s") from exc
        return {
            "backend": backend.name,
            "users": args.users,
            "concurrency": args.concurrency,
            "retry_base_s": args.retry_base_s,
            **result,
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--db",
        nargs="?",
        const=DEFAULT_PG,
        default=None,
        help=f"a PostgreSQL server URL (bare --db: {DEFAULT_PG}); default: SQLite",
    )
    parser.add_argument("--users", type=int, default=100, help="users who log in (100)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (4)")
    parser.add_argument(
        "--retry-base-s", type=float, default=0.2, help="the broker's first retry wait (0.2)"
    )
    parser.add_argument("--argon2-memory-kib", type=int, default=8192, help="argon2id memory")
    parser.add_argument("--argon2-time-cost", type=int, default=1, help="argon2id passes")
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many s")
    args = parser.parse_args(argv)
    if args.users < 1 or args.concurrency < 1 or args.users > 1000:
        parser.error("--users must be 1 to 1000 and --concurrency at least 1")
    args.desktops = args.users
    args.workers = 1
    args.engine = True  # the engine is what delivers
    args.extra_env = {
        "DESKBROKER_WEBHOOK_RETRY_BASE_S": str(args.retry_base_s),
        "DESKBROKER_WEBHOOK_RETRY_CAP_S": "2",
    }
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        for phase in ("without_webhooks", "with_dead_and_flaky_webhooks"):
            f = result[phase]
            print(
                f"{phase:30} {f['logins']:5} logins  "
                f"p50 {f['p50_ms']:7.1f} ms  p99 {f['p99_ms']:7.1f} ms"
            )
        print(
            f"{result['events']} events delivered to the flaky receiver "
            f"{result['all_delivered_after_s']} s after the last login "
            f"({result['receiver_attempts']} attempts)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

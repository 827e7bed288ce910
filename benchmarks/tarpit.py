#!/usr/bin/env python3
"""Logins while a center hangs: login latency with and without a tarpit center.

A real broker (``deskbroker serve``, engine on) on 127.0.0.1, seeded as in
``benchmarks/login.py``. Every user logs in once (claiming a desktop), then the logins
are measured twice: first on a quiet broker, then after an OpenStack center pointing at
a tarpit (a 127.0.0.1 listener that accepts and never answers) was saved and an admin
asked for a scan, while the engine's scan of it hangs. Also reported: how long the save
and "scan now" took to answer.

Usage::

    .venv/bin/python benchmarks/tarpit.py --json
    .venv/bin/python benchmarks/tarpit.py --json --db postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from login import (  # a sibling script, found through sys.path above
    DEFAULT_PG,
    USER_PASSWORD,
    BenchError,
    expect,
    percentile,
    prepared_broker,
    seed,
)


class Tarpit:
    """Accepts TCP connections on 127.0.0.1 and never answers them."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.listener.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the accept() above
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for conn in self.held:
            conn.close()


async def login_round(
    http: httpx.AsyncClient, names: list[str], concurrency: int
) -> tuple[list[float], list[str]]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors: list[str] = []

    async def one(name: str) -> None:
        async with gate:
            started = time.perf_counter()
            response = await http.post(
                "/api/v1/auth/login", json={"username": name, "password": USER_PASSWORD}
            )
            if response.status_code != 200:
                errors.append(f"{name}: {response.status_code} {response.text[:200]}")
                return
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(one(n) for n in names))
    return latencies, errors


def figures(latencies: list[float]) -> dict[str, float]:
    return {
        "logins": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(max(latencies, default=0.0), 1),
    }


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        token = await seed(http, args)
        auth = {"Authorization": f"Bearer {token}"}
        names = [f"bench-user-{i:05d}" for i in range(args.users)]
        await login_round(http, names, args.concurrency)  # every user claims a desktop
        quiet: list[float] = []
        errors: list[str] = []
        for _ in range(args.rounds):
            latencies, failed = await login_round(http, names, args.concurrency)
            quiet += latencies
            errors += failed
        pit = Tarpit()
        try:
            started = time.perf_counter()
            center = expect(
                await http.post(
                    "/api/v1/admin/centers",
                    headers=auth,
                    json={
                        "name": "tarpit",
                        "kind": "openstack",
                        "params": {
                            "auth_url": f"http://127.0.0.1:{pit.port}/v3",
                            "project_name": "demo",
                            "username": "demo",
                        },
                        "secrets": {"password": "password"},
                        "scan_interval_s": 5,
                    },
                ),
                201,
                "save the tarpit center",
            )
            save_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            scan = await http.post(f"/api/v1/admin/centers/{center['id']}/scan", headers=auth)
            scan_ms = (time.perf_counter() - started) * 1000
            deadline = time.monotonic() + 30
            while not pit.held:
                if time.monotonic() > deadline:
                    raise BenchError("the engine never scanned the tarpit center")
                await asyncio.sleep(0.05)
            hanging: list[float] = []
            for _ in range(args.rounds):
                latencies, failed = await login_round(http, names, args.concurrency)
                hanging += latencies
                errors += failed
            held = len(pit.held)
        finally:
            pit.close()
    return {
        "without_tarpit": figures(quiet),
        "with_tarpit": figures(hanging),
        "center_save_ms": round(save_ms, 1),
        "scan_now_status": scan.status_code,
        "scan_now_ms": round(scan_ms, 1),
        "tarpit_connections": held,
        "login_errors": len(errors),
        "first_errors": errors[:3],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with prepared_broker(args, "deskbroker-tarpit-") as (broker, backend):
        try:
            result = asyncio.run(asyncio.wait_for(measure(broker.url, args), args.timeout))
        except TimeoutError as exc:
            raise BenchError(f"the benchmark took longer than {args.timeout} s") from exc
        return {
            "backend": backend.name,
            "users": args.users,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "argon2_time_cost": args.argon2_time_cost,
            "argon2_memory_kib": args.argon2_memory_kib,
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
    parser.add_argument("--users", type=int, default=50, help="users who log in (50)")
    parser.add_argument("--rounds", type=int, default=4, help="measured logins per user (4)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (4)")
    parser.add_argument("--argon2-memory-kib", type=int, default=8192, help="argon2id memory")
    parser.add_argument("--argon2-time-cost", type=int, default=1, help="argon2id passes")
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many s")
    args = parser.parse_args(argv)
    if args.users < 1 or args.rounds < 1 or args.concurrency < 1:
        parser.error("--users, --rounds and --concurrency must be at least 1")
    args.desktops = args.users
    args.engine = True  # the engine is what scans the tarpit
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
        for phase in ("without_tarpit", "with_tarpit"):
            f = result[phase]
            print(
                f"{phase:15} {f['logins']:5} logins  "
                f"p50 {f['p50_ms']:7.1f} ms  p99 {f['p99_ms']:7.1f} ms"
            )
        print(
            f"center saved in {result['center_save_ms']} ms; scan now answered "
            f"{result['scan_now_status']} in {result['scan_now_ms']} ms"
        )
    return 1 if result["login_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The floors under the login path's CPU and the event log's bytes (docs/scaling.md,
"6 December"): what any plan for issue 14's targets must get under.

- ``request``: CPU of a ``deskbroker serve`` node (one worker, SQLite, engine off) per
  request to ``/healthz`` (uvicorn, the node's middleware, a sync route, no SQL), from
  ``/proc``, with an aiohttp client keeping ``--concurrency`` requests in flight.
- ``unit_of_work``: CPU of this process per ORM read unit of work against PostgreSQL
  (``deskbroker.store.db.Database``, as the broker opens them): one trivial statement,
  two in one unit, and two units of one statement each.
- ``event_bytes``: bytes per flow (four event rows as a flow writes them: login, connect,
  session login, session logout; indexes included) of a table shaped as ``events``, with
  the current column types and leaner ones, in a scratch database dropped afterwards.

Usage::

    .venv/bin/python benchmarks/floors.py --json
    .venv/bin/python benchmarks/floors.py --json --db postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from psycopg import sql
from sqlalchemy import literal, select

from deskbroker.store.db import Database
from login import DEFAULT_PG, PostgresBackend, free_port


def node_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _hammer(port: int, requests: int, concurrency: int, pid: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}/healthz"
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 60
        while True:
            try:
                async with http.get(url) as answer:
                    if answer.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the node did not answer /healthz within 60 s")
            await asyncio.sleep(0.2)
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate, http.get(url) as answer:
                await answer.read()
                if answer.status != 200:
                    raise SystemExit(f"/healthz answered {answer.status}")

        cpu = node_cpu_s(pid)
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        wall = time.perf_counter() - started
        return {
            "requests_per_s": round(requests / wall, 1),
            "node_cpu_ms_per_request": round(1000 * (node_cpu_s(pid) - cpu) / requests, 3),
        }


def request_floor(requests: int, concurrency: int) -> dict[str, float]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="deskbroker-floors-") as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DESKBROKER_")}
        env.update(DESKBROKER_ENGINE="false", DESKBROKER_LOG_LEVEL="warning")
        env.update(DESKBROKER_CONFIG=os.devnull)
        node = subprocess.Popen(
            [
                *(sys.executable, "-m", "deskbroker.cli", "serve", "--host", "127.0.0.1"),
                *("--port", str(port), "--data-dir", data, "--db", f"sqlite:///{data}/broker.db"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            return asyncio.run(_hammer(port, requests, concurrency, node.pid))
        finally:
            node.terminate()
            node.wait(timeout=30)


def unit_of_work_floor(url: str, rounds: int) -> dict[str, float]:
    db = Database(url, pool_size=2)
    trivial = select(literal(1))

    def one_statement() -> None:
        with db.read() as session:
            session.execute(trivial)

    def two_statements() -> None:
        with db.read() as session:
            session.execute(trivial)
            session.execute(trivial)

    def two_units() -> None:
        one_statement()
        one_statement()

    def cpu_ms(work: Callable[[], None]) -> float:
        for _ in range(rounds // 10):  # warm the pool and the statement cache
            work()
        started = time.process_time()
        for _ in range(rounds):
            work()
        return 1000 * (time.process_time() - started) / rounds

    try:
        one, two, units = cpu_ms(one_statement), cpu_ms(two_statements), cpu_ms(two_units)
    finally:
        db.dispose()
    return {
        "one_statement_unit_ms": round(one, 3),
        "another_statement_ms": round(two - one, 3),
        "another_unit_ms": round(units - two, 3),
    }


def _flows(count: int) -> Iterator[tuple[str, str, str, str | None, str | None, str]]:
    for i in range(count):
        user, desktop, session = (uuid.uuid4().hex for _ in range(3))
        name, agent = f"bench{i:05d}", f"agent@desk-{i:05d}"
        yield "login", name, user, None, None, '{"client": "127.0.0.1", "rule": null}'
        yield (
            "connect",
            name,
            user,
            desktop,
            "p",
            ('{"protocol": "vnc", "client": "127.0.0.1", "route": "direct"}'),
        )
        detail = f'{{"session_id": "{session}", "user": "{name}"'
        yield "session.login", agent, user, desktop, "p", detail + "}"
        yield "session.logout", agent, user, desktop, "p", detail + ', "previous": "logged_in"}'


# name: (id column type, index on user_id, detail type, pool id kept)
SHAPES: dict[str, tuple[str, bool, str, bool]] = {
    "as_now": ("varchar(32)", True, "json", True),
    "no_user_index": ("varchar(32)", False, "json", True),
    "uuid_ids": ("uuid", True, "json", True),
    "uuid_ids_no_user_index": ("uuid", False, "json", True),
    "uuid_ids_no_user_index_jsonb": ("uuid", False, "jsonb", True),
    "uuid_ids_no_user_index_no_pool": ("uuid", False, "json", False),
}


def event_bytes(server_url: str, flows: int) -> dict[str, int]:
    backend = PostgresBackend(server_url)
    tenant, pool = uuid.uuid4().hex, uuid.uuid4().hex
    out: dict[str, int] = {}
    try:
        with psycopg.connect(backend.url, autocommit=True) as conn:
            for name, (ids, user_index, detail, keep_pool) in SHAPES.items():
                table = sql.Identifier(f"ev_{name}")
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE {} (id serial PRIMARY KEY, tenant_id {ids}, "
                        "at timestamptz DEFAULT now(), kind varchar(40), actor varchar(200), "
                        "user_id {ids}, desktop_id {ids}, pool_id {ids}, detail {detail})"
                    ).format(table, ids=sql.SQL(ids), detail=sql.SQL(detail))
                )
                conn.execute(sql.SQL("CREATE INDEX ON {} (tenant_id, at)").format(table))
                if user_index:
                    conn.execute(sql.SQL("CREATE INDEX ON {} (user_id)").format(table))
                rows = [
                    (tenant, kind, actor, user, desktop, pool if keep and keep_pool else None, d)
                    for kind, actor, user, desktop, keep, d in _flows(flows)
                ]
                with conn.cursor() as cursor:
                    cursor.executemany(
                        sql.SQL(
                            "INSERT INTO {} (tenant_id, kind, actor, user_id, desktop_id, "
                            "pool_id, detail) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                        ).format(table),
                        rows,
                    )
                found = conn.execute(
                    sql.SQL("SELECT pg_total_relation_size({})").format(sql.Literal(f"ev_{name}"))
                ).fetchone()
                out[name] = round((found[0] if found else 0) / flows)
    finally:
        backend.cleanup()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--db", default=DEFAULT_PG, help="PostgreSQL server (a scratch database)")
    parser.add_argument("--requests", type=int, default=3000, help="requests to /healthz")
    parser.add_argument("--concurrency", type=int, default=20, help="requests in flight")
    parser.add_argument("--rounds", type=int, default=3000, help="units of work per figure")
    parser.add_argument("--flows", type=int, default=2500, help="flows of event rows")
    args = parser.parse_args(argv)
    if min(args.requests, args.concurrency, args.rounds, args.flows) < 1:
        parser.error("--requests, --concurrency, --rounds and --flows must be at least 1")
    scratch = PostgresBackend(args.db)
    try:
        uow = unit_of_work_floor(scratch.url, args.rounds)
    finally:
        scratch.cleanup()
    result: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "request": request_floor(args.requests, args.concurrency),
        "unit_of_work": uow,
        "event_bytes_per_flow": event_bytes(args.db, args.flows),
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for part, figures in result.items():
            print(f"{part}: {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Login storm: N users log in and connect to a real broker over real HTTP.

The broker runs as a separate ``deskbroker serve`` process (so the client and the server
do not share a GIL) on 127.0.0.1, on a fresh SQLite file or on a throwaway PostgreSQL
database. It is configured through the admin API exactly as an operator would: a static
center with one machine per user, a pool, a VNC protocol plan, a policy and a catch-all
assignment rule. Then every user logs in (all logins first), and then every user who got
a desktop asks for a connection descriptor. The two phases are measured separately:

- latency of each request, as the client sees it (p50, p99);
- throughput over the wall time of the phase;
- SQL statements per request, from ``deskbroker_sql_statements_total`` at ``/metrics``;
- database growth per request (SQLite: file + WAL after a truncating checkpoint;
  PostgreSQL: ``pg_database_size``).

Usage::

    .venv/bin/python benchmarks/login.py                       # a table
    .venv/bin/python benchmarks/login.py --json                # one JSON object
    .venv/bin/python benchmarks/login.py --json --db postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python benchmarks/login.py --json --db --workers 2    # two HTTP workers

Cluster mode (``--nodes K``, see ``_cluster.py`` and docs/scaling.md "Cluster mode"): K
nodes on one PostgreSQL, the users in a real slapd, each doing log in, offers, connect and
the agent's login and logout::

    .venv/bin/python benchmarks/login.py --json --nodes 2 --users 1000 --private-pg
    .venv/bin/python benchmarks/login.py --json --nodes 1 --users 750 --rate 150 --private-pg

With ``--db postgresql://...`` the URL names a server and a database to connect to for
administration; the benchmark creates ``deskbroker_bench_<random>`` there and drops it at
the end. Password hashing (argon2id) dominates the cost of a login, so its cost is a flag
and is reported with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import httpx
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

import _claims
from _cpu import cpu_seconds
from deskbroker.bootstrap import add_local_user
from deskbroker.config import Settings
from deskbroker.domain.offers import OfferOrdering
from deskbroker.services.context import BrokerContext

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
ADMIN = ("bench-admin", "bench-admin-password")
USER_PASSWORD = "bench-user-password"
# The statement counts are read from /metrics, which asks for the metrics token.
METRICS_TOKEN = "bench-metrics-token-" + "x" * 16
SQL_METRIC = re.compile(r"^deskbroker_sql_statements_total\s+(\S+)$", re.MULTILINE)
CLAIM_METRIC = re.compile(r"^deskbroker_claim_seconds_(sum|count)\s+(\S+)$", re.MULTILINE)


class BenchError(Exception):
    """The benchmark could not run; the message says why."""


# --- the database under test -----------------------------------------------------------
class Backend:
    """Where the broker keeps its state, and how big that state is."""

    name = ""
    url = ""

    def size_bytes(self) -> int:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Remove whatever the benchmark created."""


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "deskbroker.db"
        self.url = f"sqlite:///{self.path}"

    def size_bytes(self) -> int:
        # Fold the WAL into the main file so the figure is what the data really takes.
        with contextlib.closing(sqlite3.connect(self.path, timeout=30)) as conn:
            for _ in range(50):
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if not busy:
                    break
                time.sleep(0.1)
        wal = self.path.with_name(self.path.name + "-wal")
        return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


class PostgresBackend(Backend):
    name = "postgresql"

    def __init__(self, server_url: str) -> None:
        parsed = make_url(server_url)
        if parsed.get_backend_name() != "postgresql":
            raise BenchError(f"--db must be a postgresql:// URL, not {server_url!r}")
        self.admin_dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        self.database = f"deskbroker_bench_{uuid.uuid4().hex[:10]}"
        try:
            with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=10) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        except psycopg.Error as exc:
            raise BenchError(f"cannot create a database on {parsed!r}: {exc}") from exc
        self.url = parsed.set(drivername="postgresql", database=self.database).render_as_string(
            hide_password=False
        )

    def size_bytes(self) -> int:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0

    def cleanup(self) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(self.database)
                )
            )


# --- the broker process ----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Broker:
    """A ``deskbroker serve`` child process and where it listens."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def broker_env(args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESKBROKER_")}
    env.update(
        DESKBROKER_ARGON2_TIME_COST=str(args.argon2_time_cost),
        DESKBROKER_ARGON2_MEMORY_KIB=str(args.argon2_memory_kib),
        DESKBROKER_DB_POOL_SIZE=str(max(10, args.concurrency)),
        DESKBROKER_LOG_LEVEL="warning",
        DESKBROKER_OUTBOUND_ALLOW="127.0.0.0/8",
        DESKBROKER_METRICS_TOKEN=METRICS_TOKEN,
        # Background work (scans, provisioning, timers) sends its own SQL; off by default
        # so that the statement counts belong to the requests alone.
        DESKBROKER_ENGINE="true" if args.engine else "false",
        # No operator config file may leak into the measurement.
        DESKBROKER_CONFIG=os.devnull,
    )
    # Settings a benchmark of its own needs (benchmarks/webhooks.py: retry timings).
    env.update(getattr(args, "extra_env", {}))
    return env


@contextlib.contextmanager
def running_broker(args: argparse.Namespace, backend: Backend, data_dir: Path) -> Iterator[Broker]:
    port = free_port()
    log = data_dir / "broker.log"
    command = [
        sys.executable,
        "-m",
        "deskbroker.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--db",
        backend.url,
        "--data-dir",
        str(data_dir),
        "--workers",
        str(args.workers),
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=data_dir, env=broker_env(args), stdout=sink, stderr=subprocess.STDOUT
        )
    broker = Broker(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise BenchError(
                    f"the broker exited with {process.returncode}:\n{broker.log_tail()}"
                )
            try:
                if httpx.get(f"{broker.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"the broker was not ready after 180 s:\n{broker.log_tail()}")
            time.sleep(0.1)
        yield broker
    finally:
        broker.stop()


# --- seeding through the admin API -------------------------------------------------------
def machine_address(index: int) -> str:
    """127.0.1.1, 127.0.1.2, ... 127.0.1.254, 127.0.2.1, ...: all loopback."""
    return f"127.0.{1 + index // 254}.{1 + index % 254}"


@dataclass(frozen=True)
class Answer:
    """A response as the flow reads it (what ``login.expect`` needs of one)."""

    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class Wire:
    """The load generator's HTTP client for the measured requests: aiohttp over
    keep-alive connections to one node. httpx cost the generator 12 ms of CPU per flow
    of five requests on an idle machine (25 to 53 ms on a loaded one), aiohttp 2 to 3:
    on the same two cores, what the generator spends the broker does not get."""

    def __init__(self, base_url: str, connections: int) -> None:
        self.base_url = base_url
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, force_close=False),
            timeout=aiohttp.ClientTimeout(total=60),
        )

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        async with self.session.request(
            method, self.base_url + url, json=json, headers=headers
        ) as response:
            return Answer(response.status, dict(response.headers), await response.read())

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> Wire:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Reply(Protocol):
    """What ``expect`` reads of a response: httpx's, or the cluster flow's aiohttp one."""

    @property
    def status_code(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def content(self) -> bytes: ...
    def json(self) -> Any: ...


def expect(response: Reply, status: int, what: str) -> dict[str, Any]:
    if response.status_code != status:
        raise BenchError(f"{what}: HTTP {response.status_code}: {response.text[:500]}")
    body: dict[str, Any] = response.json() if response.content else {}
    return body


async def admin_post(
    http: httpx.AsyncClient, auth: dict[str, str], path: str, body: dict[str, Any]
) -> dict[str, Any]:
    """``POST /api/v1/admin/{path}``, expecting 201. A burst of one tenant's writes may be
    told to wait (429 or 503 with Retry-After: the tenant's changes take turns): each is
    sent again then, as a script would."""
    for _ in range(30):
        answer = await http.post(f"/api/v1/admin/{path}", json=body, headers=auth)
        if answer.status_code not in (429, 503) or "Retry-After" not in answer.headers:
            break
        await asyncio.sleep(float(answer.headers["Retry-After"]))
    return expect(answer, 201, f"POST {path}")


async def seed(http: httpx.AsyncClient, args: argparse.Namespace) -> str:
    """Configure the broker as an operator would; returns the admin token."""
    token = expect(
        await http.post("/api/v1/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]}),
        200,
        "admin log in",
    )["token"]
    auth = {"Authorization": f"Bearer {token}"}

    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await admin_post(http, auth, path, body)

    center = await post(
        "centers",
        {
            "name": "bench-center",
            "kind": "static",
            "params": {
                "machines": [
                    {
                        "name": f"bench-{i + 1:05d}",
                        "address": machine_address(i),
                        "ports": {"vnc": 5900},
                    }
                    for i in range(args.desktops)
                ]
            },
        },
    )
    plan = await post("protocol-plans", {"name": "bench-vnc", "protocols": [{"protocol": "vnc"}]})
    pool = await post("pools", {"name": "bench-pool", "center_ids": [center["id"]]})
    policy = await post(
        "policies",
        {
            "name": "bench-policy",
            "entries": [{"pool_id": pool["id"], "protocol_plan_id": plan["id"]}],
        },
    )
    sources = expect(
        await http.get("/api/v1/admin/identity-sources", params={"kind": "local"}, headers=auth),
        200,
        "list identity sources",
    )["items"]
    source_id = sources[0]["id"]
    await post(
        "assignment-rules",
        {"identity_source_id": source_id, "name": "everyone", "policy_id": policy["id"]},
    )
    gate = asyncio.Semaphore(args.concurrency)

    async def add_user(i: int) -> None:
        async with gate:
            await post(
                "users",
                {
                    "identity_source_id": source_id,
                    "username": f"bench-user-{i:05d}",
                    "password": USER_PASSWORD,
                },
            )

    await asyncio.gather(*(add_user(i) for i in range(args.users)))
    # Load the per-node config cache, as any running broker would have done long ago.
    expect(await http.get("/api/v1/client/desktops", headers=auth), 200, "warm the cache")
    return str(token)


# --- measuring -------------------------------------------------------------------------
@dataclass
class Phase:
    """One measured phase: latencies, wall time, SQL and database growth."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    sql: float = 0.0
    db_bytes: int = 0
    broker_cpu_s: float = 0.0
    late_starts: int = 0  # paced jobs that started over 10 ms after their time

    @property
    def done(self) -> int:
        return len(self.latencies_ms)

    def per_s(self) -> float:
        return self.done / self.wall_s if self.wall_s > 0 else 0.0

    def per_request(self, total: float) -> float:
        return total / self.done if self.done else 0.0


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


async def sql_total(http: httpx.AsyncClient) -> float:
    response = await http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    match = SQL_METRIC.search(response.text)
    if match is None:
        raise BenchError("/metrics has no deskbroker_sql_statements_total")
    return float(match.group(1))


async def claim_mean_ms(http: httpx.AsyncClient) -> float:
    """The claim statement's mean time in the broker, from ``deskbroker_claim_seconds``."""
    response = await http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    found = {kind: float(value) for kind, value in CLAIM_METRIC.findall(response.text)}
    return 1000 * found["sum"] / found["count"] if found.get("count") else 0.0


async def measure(
    http: httpx.AsyncClient,
    backend: Backend,
    broker: Broker,
    concurrency: int,
    jobs: list[Callable[[], Awaitable[None]]],
    phase: Phase,
    rate: float = 0.0,
) -> None:
    """Run ``jobs`` with at most ``concurrency`` in flight and record the phase totals;
    with ``rate``, job i starts at i / rate seconds (open loop), whenever the ones before
    it end."""
    sql_before = await sql_total(http)
    size_before = await asyncio.to_thread(backend.size_bytes)
    cpu_before = await asyncio.to_thread(cpu_seconds, [broker.process.pid])
    gate = asyncio.Semaphore(concurrency)

    started = time.perf_counter()

    async def limited(i: int, job: Callable[[], Awaitable[None]]) -> None:
        if rate:
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
        async with gate:
            if rate and time.perf_counter() - (started + i / rate) > 0.01:
                phase.late_starts += 1
            await job()

    await asyncio.gather(*(limited(i, job) for i, job in enumerate(jobs)))
    phase.wall_s = time.perf_counter() - started
    phase.broker_cpu_s = await asyncio.to_thread(cpu_seconds, [broker.process.pid]) - cpu_before
    phase.sql = await sql_total(http) - sql_before
    phase.db_bytes = await asyncio.to_thread(backend.size_bytes) - size_before


async def storm(broker: Broker, backend: Backend, args: argparse.Namespace) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=args.concurrency + 4, max_keepalive_connections=None)
    async with (
        Wire(broker.url, args.concurrency + 4) as wire,
        httpx.AsyncClient(base_url=broker.url, timeout=60, limits=limits) as http,
    ):
        seed_started = time.perf_counter()
        await seed(http, args)
        seed_s = time.perf_counter() - seed_started

        logins = Phase()
        tokens: dict[str, tuple[str, str]] = {}  # username -> (token, desktop id)
        queued = 0

        def login_job(username: str) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                nonlocal queued
                started = time.perf_counter()
                response = await wire.request(
                    "POST",
                    "/api/v1/auth/login",
                    json={"username": username, "password": USER_PASSWORD},
                )
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    logins.errors.append(f"{username}: {response.status_code} {response.text}")
                    return
                logins.latencies_ms.append(elapsed)
                body = response.json()
                offer = body["offers"][0] if body["offers"] else None
                if offer and offer["status"] == "assigned":
                    tokens[username] = (body["token"], offer["desktop"]["id"])
                else:
                    queued += 1

            return job

        names = [f"bench-user-{i:05d}" for i in range(args.users)]
        await measure(
            http,
            backend,
            broker,
            args.concurrency,
            [login_job(n) for n in names],
            logins,
            args.rate,
        )
        claim_ms = await claim_mean_ms(http)

        connects = Phase()

        def connect_job(username: str) -> Callable[[], Awaitable[None]]:
            token, desktop_id = tokens[username]

            async def job() -> None:
                started = time.perf_counter()
                response = await wire.request(
                    "POST",
                    f"/api/v1/client/desktops/{desktop_id}/connect",
                    json={"protocol": "vnc"},
                    headers={"Authorization": f"Bearer {token}"},
                )
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200 or "[Connection]" not in response.text:
                    connects.errors.append(f"{username}: {response.status_code} {response.text}")
                    return
                connects.latencies_ms.append(elapsed)

            return job

        await measure(
            http,
            backend,
            broker,
            args.concurrency,
            [connect_job(n) for n in sorted(tokens)],
            connects,
        )

    return {
        "backend": backend.name,
        "users": args.users,
        "desktops": args.desktops,
        "concurrency": args.concurrency,
        "workers": args.workers,
        "argon2_time_cost": args.argon2_time_cost,
        "argon2_memory_kib": args.argon2_memory_kib,
        "engine": args.engine,
        "logins": logins.done,
        "login_errors": len(logins.errors),
        "assigned": len(tokens),
        "queued": queued,
        "rate": args.rate,
        "late_starts": logins.late_starts,
        "logins_per_s": round(logins.per_s(), 1),
        "p50_ms": round(percentile(logins.latencies_ms, 50), 1),
        "p99_ms": round(percentile(logins.latencies_ms, 99), 1),
        "sql_per_login": round(logins.per_request(logins.sql), 2),
        "broker_cpu_ms_per_login": round(1000 * logins.per_request(logins.broker_cpu_s), 2),
        "claim_ms": round(claim_ms, 3),
        "db_bytes_per_login": round(logins.per_request(logins.db_bytes)),
        "connects": connects.done,
        "connect_errors": len(connects.errors),
        "connects_per_s": round(connects.per_s(), 1),
        "connect_p50_ms": round(percentile(connects.latencies_ms, 50), 1),
        "connect_p99_ms": round(percentile(connects.latencies_ms, 99), 1),
        "sql_per_connect": round(connects.per_request(connects.sql), 2),
        "broker_cpu_ms_per_connect": round(1000 * connects.per_request(connects.broker_cpu_s), 2),
        "db_bytes_per_connect": round(connects.per_request(connects.db_bytes)),
        "login_wall_s": round(logins.wall_s, 3),
        "connect_wall_s": round(connects.wall_s, 3),
        "seed_s": round(seed_s, 2),
        "first_errors": (logins.errors + connects.errors)[:3],
        "cpus": os.cpu_count(),
    }


# --- the whole run ---------------------------------------------------------------------
@contextlib.contextmanager
def prepared_broker(args: argparse.Namespace, prefix: str) -> Iterator[tuple[Broker, Backend]]:
    """A fresh database (SQLite, or ``--db``'s PostgreSQL server), its first
    administrator, and a running broker on it; all removed afterwards. Shared by the
    benchmarks that drive a real broker (``login.py``, ``tarpit.py``)."""
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    backend: Backend | None = None
    try:
        backend = (
            PostgresBackend(args.db)
            if args.db and args.db.startswith("postgres")
            else SqliteBackend(data_dir)
        )
        if args.db and backend.name == "sqlite":
            raise BenchError("--db takes a postgresql:// URL; SQLite is the default")
        # The first administrator comes from the command line, as on a real install.
        settings = Settings(
            data_dir=data_dir,
            database_url=backend.url,
            argon2_time_cost=args.argon2_time_cost,
            argon2_memory_kib=args.argon2_memory_kib,
            outbound_allow="127.0.0.0/8",
            metrics_token=METRICS_TOKEN,
        )
        ctx = BrokerContext.from_settings(settings)
        try:
            add_local_user(ctx, ADMIN[0], ADMIN[1], role="global_admin")
        finally:
            ctx.db.dispose()
        with running_broker(args, backend, data_dir) as broker:
            yield broker, backend
    finally:
        if backend is not None:
            backend.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with prepared_broker(args, "deskbroker-bench-") as (broker, backend):
        try:
            return asyncio.run(asyncio.wait_for(storm(broker, backend, args), args.timeout))
        except TimeoutError as exc:
            raise BenchError(f"the benchmark took longer than {args.timeout} s") from exc
        except BenchError as exc:
            raise BenchError(f"{exc}\n--- broker log ---\n{broker.log_tail()}") from exc


def show_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=(
            f"deskbroker login storm: {result['users']} users, concurrency "
            f"{result['concurrency']}, {result['backend']}, argon2id "
            f"t={result['argon2_time_cost']} m={result['argon2_memory_kib']} KiB"
        )
    )
    table.add_column("phase")
    for column in ("done", "errors", "per s", "p50 ms", "p99 ms", "SQL/req", "DB bytes/req"):
        table.add_column(column, justify="right")
    table.add_row(
        "log in",
        str(result["logins"]),
        str(result["login_errors"]),
        f"{result['logins_per_s']:.1f}",
        f"{result['p50_ms']:.1f}",
        f"{result['p99_ms']:.1f}",
        f"{result['sql_per_login']:.2f}",
        str(result["db_bytes_per_login"]),
    )
    table.add_row(
        "connect",
        str(result["connects"]),
        str(result["connect_errors"]),
        f"{result['connects_per_s']:.1f}",
        f"{result['connect_p50_ms']:.1f}",
        f"{result['connect_p99_ms']:.1f}",
        f"{result['sql_per_connect']:.2f}",
        str(result["db_bytes_per_connect"]),
    )
    console = Console()
    console.print(table)
    console.print(
        f"{result['assigned']} assigned, {result['queued']} queued; "
        f"seeding took {result['seed_s']} s"
    )
    for error in result["first_errors"]:
        console.print(f"[red]error:[/] {error}", markup=True, highlight=False)


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
    parser.add_argument("--users", type=int, default=200, help="users who log in (200)")
    parser.add_argument("--concurrency", type=int, default=20, help="requests in flight (20)")
    parser.add_argument(
        "--desktops",
        type=_sizes,
        default=None,
        help="desktops in the pool (default: one per user); a list (50,20000) measures "
        "the claim against the pool's size instead of the storm",
    )
    parser.add_argument("--claims", type=int, default=300, help="claims timed per pool size (300)")
    parser.add_argument(
        "--ordering",
        default=OfferOrdering.RUNNING_FIRST.value,
        choices=[o.value for o in OfferOrdering],
        help="the pool ordering the claims use (running_first)",
    )
    parser.add_argument("--argon2-memory-kib", type=int, default=8192, help="argon2id memory")
    parser.add_argument("--argon2-time-cost", type=int, default=1, help="argon2id passes")
    parser.add_argument(
        "--engine",
        action="store_true",
        help="run the broker's background engine too (its SQL then counts in the figures)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="the broker's HTTP worker processes (serve --workers; more than 1 needs --db)",
    )
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many s")
    cluster = parser.add_argument_group(
        "cluster mode", "K nodes on PostgreSQL, users in a real slapd, the whole flow"
    )
    cluster.add_argument(
        "--nodes", type=int, default=0, help="broker nodes (cluster mode when given)"
    )
    cluster.add_argument("--rounds", type=int, default=2, help="times each user's flow runs (2)")
    cluster.add_argument(
        "--calibrate", type=int, default=20, help="users run step by step to count SQL (20)"
    )
    cluster.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="start this many flows per second (open loop); without --nodes, logins",
    )
    cluster.add_argument(
        "--private-pg",
        action="store_true",
        help="a throwaway PostgreSQL with pg_stat_statements loaded, instead of --db",
    )
    cluster.add_argument(
        "--top-statements",
        type=int,
        default=0,
        help="list the N most called statements (with pg_stat_statements)",
    )
    cluster.add_argument(
        "--profile",
        metavar="FILE",
        default=None,
        help="py-spy the first node during the rounds; collapsed stacks to FILE",
    )
    args = parser.parse_args(argv)
    if args.nodes:
        if args.nodes < 1 or args.rounds < 1 or args.calibrate < 0 or args.rate < 0:
            parser.error("--nodes and --rounds must be at least 1, --calibrate and --rate >= 0")
        if args.users < 1 or args.concurrency < 1 or args.users + args.calibrate > 10000:
            parser.error("--users and --concurrency must be at least 1, users + calibrate <= 10000")
        args.db = args.db or DEFAULT_PG
        args.desktops = args.users + args.calibrate
        args.pool_sizes = []
        return args
    if args.workers < 1 or (args.workers > 1 and args.db is None):
        parser.error("--workers must be at least 1, and more than 1 only on PostgreSQL (--db)")
    if args.users < 1 or args.concurrency < 1 or args.rate < 0:
        parser.error("--users and --concurrency must be at least 1, --rate >= 0")
    args.pool_sizes = args.desktops or []
    if len(args.pool_sizes) > 1:
        if args.claims < 20:
            parser.error("--claims must be at least 20")
        return args
    args.desktops = args.pool_sizes[0] if args.pool_sizes else args.users
    if not 1 <= args.desktops <= 10000:
        parser.error("--desktops must be between 1 and 10000 (a static center's limit)")
    return args


def _sizes(value: str) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a list of numbers such as 50,20000"
        ) from None
    if not sizes or min(sizes) < 1 or max(sizes) > 100000:
        raise argparse.ArgumentTypeError("pool sizes go from 1 to 100000 desktops")
    return sorted(sizes)


def run_claims(args: argparse.Namespace) -> dict[str, Any]:
    """The claim's latency in a fresh pool of each size (see ``_claims``)."""
    backends: list[Backend] = []
    pools: list[_claims.PoolUnderTest] = []
    data_dir = Path(tempfile.mkdtemp(prefix="deskbroker-claim-"))
    try:
        for size in args.pool_sizes:
            place = data_dir / str(size)
            place.mkdir()
            backend = PostgresBackend(args.db) if args.db else SqliteBackend(place)
            backends.append(backend)
            pools.append(_claims.PoolUnderTest(backend.url, place, size, args.claims + 10))
        per_size = _claims.measure(pools, args.claims + 10, OfferOrdering(args.ordering))
    finally:
        for pool in pools:
            pool.ctx.db.dispose()
        for backend in backends:
            backend.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)
    return {
        "benchmark": "claim",
        "backend": "postgresql" if args.db else "sqlite",
        "ordering": args.ordering,
        "claim_ms": {str(r["desktops"]): r["claim_ms"] for r in per_size},
        "claim_spread": _claims.spread(per_size),
        "sizes": per_size,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if len(args.pool_sizes) > 1:
        try:
            claimed = run_claims(args)
        except BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(claimed) if args.json else json.dumps(claimed, indent=2))
        return 0
    if args.nodes:
        return _run_cluster(args)
    try:
        result = run(args)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        show_table(result)
    return 1 if result["login_errors"] or result["connect_errors"] else 0


def _run_cluster(args: argparse.Namespace) -> int:
    # Cluster mode reuses the tests' slapd helpers (tests/identity): the checkout's root
    # goes on the path, and only in this mode.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import _cluster

    try:
        result = _cluster.run(args)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        _cluster.show(result)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""The pieces of ``login.py``'s cluster mode that stand up the world: a PostgreSQL
database (the given server's, or a throwaway server with pg_stat_statements loaded), the
counters PostgreSQL keeps, a private slapd with the users, and the broker nodes."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from ldap3 import Connection
from tests.identity.directories import LDAP_BASE, Slapd, running_slapd

from _cpu import cpu_seconds
from deskbroker.bootstrap import add_local_user
from deskbroker.config import Settings
from deskbroker.services.context import BrokerContext
from login import (
    ADMIN,
    METRICS_TOKEN,
    BenchError,
    PostgresBackend,
    broker_env,
    free_port,
)

LDAP_DOMAIN = "example.org"
STEPS = ("login", "offers", "connect", "agent_login", "agent_logout")
# Targets from issue 14, on these 2-core machines with everything on one machine.
TARGETS = {
    "logins_per_s": (">=", 300.0),
    "sql_per_login": ("<=", 6.0),
    "db_bytes_per_login": ("<=", 1024.0),
    "p99_ms_at_150_per_s": ("<=", 100.0),
}
# Statements that are not the broker's work: transaction control, the per-node heartbeat
# (a node's own liveness, a fixed cost per second whatever the load) and our own readings.
NOT_COUNTED = (
    "query ~* '^\\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|SET|SHOW|DISCARD)\\y' "
    "OR query ILIKE '%broker_nodes%' OR query ILIKE '%pg_stat%' "
    "OR query ILIKE '%pg_database_size%' OR query ILIKE '%pg_total_relation_size%'"
)


def password_of(i: int) -> str:
    return f"bench-ldap-password-{i}"


def username_of(i: int) -> str:
    return f"bench{i:05d}"


# --- PostgreSQL, and how it counts ----------------------------------------------------------
class PrivateServer:
    """A throwaway PostgreSQL server with ``pg_stat_statements`` preloaded."""

    def __init__(self) -> None:
        from tests.pg_cluster import ThrowawayCluster, throwaway_cluster

        self._context = throwaway_cluster()
        self.cluster: ThrowawayCluster = self._context.__enter__()
        # throwaway_cluster started it without the library: restart with it loaded.
        self.cluster._run("pg_ctl", "-D", str(self.cluster.data), "-m", "fast", "-w", "stop")
        options = (
            f"-p {self.cluster.port} -c listen_addresses=127.0.0.1 -k {self.cluster.root} "
            "-c max_connections=400 -c shared_preload_libraries=pg_stat_statements "
            # Statements the clients sent; not the foreign-key checks run inside them.
            "-c pg_stat_statements.track=top"
        )
        self.cluster._run(
            "pg_ctl", "-D", str(self.cluster.data), "-l", str(self.cluster.log),
            "-w", "-o", options, "start",
        )  # fmt: skip
        self.url = f"postgresql://postgres@127.0.0.1:{self.cluster.port}/postgres"

    def close(self) -> None:
        self._context.__exit__(None, None, None)


class Counter:
    """PostgreSQL's own count of the work done in one database."""

    def __init__(self, url: str) -> None:
        self.url = url
        with psycopg.connect(url, autocommit=True) as conn:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                conn.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
                self.by = "pg_stat_statements"
            except psycopg.Error:
                # Installed but not preloaded: the view refuses to answer.
                self.by = "pg_stat_database"

    def read(self) -> dict[str, float]:
        """Statements (when countable), transactions and rows written so far."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            out: dict[str, float] = {}
            if self.by == "pg_stat_statements":
                row = conn.execute(
                    "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s "  # noqa: S608
                    "JOIN pg_database d ON d.oid = s.dbid "
                    f"WHERE d.datname = current_database() AND NOT ({NOT_COUNTED})"
                ).fetchone()
                out["statements"] = float(row[0]) if row else 0.0
            row = conn.execute(
                "SELECT xact_commit + xact_rollback, tup_inserted + tup_updated + tup_deleted "
                "FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
            out["transactions"] = float(row[0]) if row else 0.0
            out["rows_written"] = float(row[1]) if row else 0.0
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            out["db_bytes"] = float(size[0]) if size else 0.0
        return out

    def top(self, limit: int) -> list[tuple[int, str]]:
        """The most called statements of the database so far (pg_stat_statements only)."""
        if self.by != "pg_stat_statements" or limit <= 0:
            return []
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 160) "  # noqa: S608
                "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                f"WHERE d.datname = current_database() AND NOT ({NOT_COUNTED}) "
                f"ORDER BY calls DESC LIMIT {int(limit)}"
            ).fetchall()
        return [(int(calls), str(query)) for calls, query in rows]

    def tables(self) -> dict[str, float]:
        """Each table's size with its indexes and TOAST, and the database-wide share of
        row updates that were HOT (no new index entries), for where the growth goes."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT relname, pg_total_relation_size(relid) FROM pg_stat_user_tables"
            ).fetchall()
            hot = conn.execute(
                "SELECT coalesce(sum(n_tup_upd), 0), coalesce(sum(n_tup_hot_upd), 0) "
                "FROM pg_stat_user_tables"
            ).fetchone()
        out = {str(name): float(size) for name, size in rows}
        out["(updates)"], out["(hot updates)"] = (float(hot[0]), float(hot[1])) if hot else (0, 0)
        return out

    def settle(self) -> None:
        """pg_stat_database is flushed by each backend when idle, at most every 10 s
        (PostgreSQL 15); pg_stat_statements is current at once."""
        if self.by != "pg_stat_statements":
            time.sleep(11)


# --- the directory ----------------------------------------------------------------------------
def load_users(slapd: Slapd, count: int) -> None:
    people = f"ou=people,{LDAP_BASE}"
    with slapd.admin() as conn:
        assert isinstance(conn, Connection)
        for i in range(count):
            conn.add(
                f"uid={username_of(i)},{people}",
                ["inetOrgPerson"],
                {
                    "uid": username_of(i),
                    "cn": f"Bench User {i}",
                    "sn": "User",
                    "userPassword": password_of(i),
                },
            )


# --- the nodes --------------------------------------------------------------------------------
@dataclass
class Node:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        return ""


def start_nodes(args: argparse.Namespace, db_url: str, data_dir: Path) -> list[Node]:
    nodes = []
    for k in range(args.nodes):
        port = free_port()
        name = f"node{k + 1}"
        log = data_dir / f"{name}.log"
        env = broker_env(args)
        env.update(DESKBROKER_BROKER_ID=name)
        command = [
            sys.executable, "-m", "deskbroker.cli", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--db", db_url, "--data-dir", str(data_dir),
            "--workers", str(args.workers),
        ]  # fmt: skip
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command, cwd=data_dir, env=env, stdout=sink, stderr=subprocess.STDOUT
            )
        nodes.append(Node(name, process, f"http://127.0.0.1:{port}", log))
    deadline = time.monotonic() + 180
    for node in nodes:
        while True:
            if node.process.poll() is not None:
                raise BenchError(f"{node.name} exited:\n{node.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{node.url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise BenchError(f"{node.name} was not ready after 180 s:\n{node.tail()}")
            time.sleep(0.1)
    return nodes


@dataclass
class World:
    """Everything a run drives."""

    nodes: list[Node]
    counter: Counter
    slapd: Slapd
    pg_pid: int | None = None  # the private server's postmaster
    agent_tokens: dict[str, str] = field(default_factory=dict)  # desktop id -> token


@contextlib.contextmanager
def cluster(args: argparse.Namespace) -> Iterator[World]:
    """The database, the directory with its users, the first administrator, the nodes."""
    data_dir = Path(tempfile.mkdtemp(prefix="deskbroker-cluster-"))
    private = PrivateServer() if args.private_pg else None
    backend: PostgresBackend | None = None
    nodes: list[Node] = []
    try:
        backend = PostgresBackend(private.url if private else args.db)
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
        counter = Counter(backend.url)
        with running_slapd(data_dir / "slapd") as slapd:
            load_users(slapd, args.users + args.calibrate)
            nodes = start_nodes(args, backend.url, data_dir)
            pg_pid = postmaster_pid(private.cluster.data) if private else None
            yield World(nodes, counter, slapd, pg_pid)
    finally:
        for node in nodes:
            node.stop()
        if backend is not None:
            backend.cleanup()
        if private is not None:
            private.close()
        shutil.rmtree(data_dir, ignore_errors=True)


# --- where the CPU goes -------------------------------------------------------------------
def postmaster_pid(data_dir: Path) -> int | None:
    """The server's main process, from its ``postmaster.pid``."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    return None


def cpu_reading(world: World) -> dict[str, float]:
    """CPU seconds so far of each part of the benchmark (PostgreSQL's only when it is
    the benchmark's own server: the shared one serves others too)."""
    out = {
        "nodes": cpu_seconds([n.process.pid for n in world.nodes]),
        "slapd": cpu_seconds([world.slapd.proc.pid] if world.slapd.proc else []),
        "load_generator": sum(os.times()[:2]),
    }
    if world.pg_pid is not None:
        out["postgresql"] = cpu_seconds([world.pg_pid])
    return out

#!/usr/bin/env python3
"""Failover: K broker nodes on one PostgreSQL under login load; one is SIGKILLed.

Each node is a real ``deskbroker serve`` process (its own process group, engine on,
its own broker id). The benchmark configures them through the admin API as
``login.py`` does, adds a center whose cloud never answers (a listener that accepts and
stays silent), so that one node's engine holds that center's scan lease, hanging; then
it starts the login storm and, once a third of the logins are done, SIGKILLs the node
holding the lease. It measures:

- ``takeover_s``: from the kill until another node holds the dead node's lease (the
  dead node must first be silent for ``node_dead_after_s``, then be reaped);
- ``lost_logins``: logins that failed although the client retried on the other nodes
  (a client whose request meets a dead node retries elsewhere, as a load balancer does);
- ``double_assignments``: users holding more than one desktop (the policy gives one);
- the storm's ``logins_per_s``, ``p50_ms``, ``p99_ms`` and how many requests were retried.

Usage::

    .venv/bin/python benchmarks/failover.py --json
    .venv/bin/python benchmarks/failover.py --json --nodes 3 --users 3000 --concurrency 40
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from deskbroker.bootstrap import add_local_user
from deskbroker.config import Settings
from deskbroker.services.context import BrokerContext
from login import (
    ADMIN,
    DEFAULT_PG,
    METRICS_TOKEN,
    USER_PASSWORD,
    BenchError,
    PostgresBackend,
    broker_env,
    expect,
    free_port,
    percentile,
    seed,
)


@dataclass
class Node:
    """One ``deskbroker serve`` of the cluster."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


class Silent:
    """A cloud that accepts connections and never answers."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.held.append(self.listener.accept()[0])

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


def start_node(args: argparse.Namespace, url: str, data_dir: Path, name: str) -> Node:
    port = free_port()
    node_dir = data_dir / name
    node_dir.mkdir()
    log = node_dir / "broker.log"
    env = broker_env(args)
    env.update(DESKBROKER_ENGINE="true", DESKBROKER_BROKER_ID=name)
    command = [
        sys.executable,
        "-m",
        "deskbroker.cli",
        "serve",
        "--port",
        str(port),
        "--db",
        url,
        "--data-dir",
        str(data_dir),
        "--workers",
        str(args.workers),
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=node_dir,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Node(name, process, f"http://127.0.0.1:{port}", log)


def wait_ready(node: Node, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            raise BenchError(f"{node.name} exited:\n{node.log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{node.url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise BenchError(f"{node.name} was not ready after {timeout_s} s")


def scan_owner(url: str, center_id: str) -> str | None:
    """The broker id of the node that holds the center's scan lease (None: nobody)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT lease_owner FROM jobs WHERE kind = 'scan_center' AND target_id = %s",
            (center_id,),
        ).fetchone()
    owner = row[0] if row else None
    return str(owner).split(":", 1)[0] if owner else None


def double_assignments(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM (SELECT assigned_user_id FROM desktops "
            "WHERE assigned_user_id IS NOT NULL GROUP BY assigned_user_id "
            "HAVING count(*) > 1) AS twice"
        ).fetchone()
    return int(row[0]) if row else 0


async def storm(args: argparse.Namespace, nodes: list[Node], url: str) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    clients = [httpx.AsyncClient(base_url=n.url, timeout=30, limits=limits) for n in nodes]
    silent = Silent()
    try:
        token = await seed(clients[0], args)
        auth = {"Authorization": f"Bearer {token}"}
        center = expect(
            await clients[0].post(
                "/api/v1/admin/centers",
                headers=auth,
                json={
                    "name": "silent-cloud",
                    "kind": "openstack",
                    "params": {
                        "auth_url": f"http://127.0.0.1:{silent.port}/v3",
                        "project_name": "demo",
                        "username": "demo",
                        "timeout_s": 600,
                    },
                    "secrets": {"password": "password"},
                    "scan_interval_s": 3600,
                },
            ),
            201,
            "add the silent center",
        )
        deadline = time.monotonic() + 60
        while (victim_name := scan_owner(url, center["id"])) is None:
            if time.monotonic() > deadline:
                raise BenchError("no node took the silent center's scan within 60 s")
            await asyncio.sleep(0.05)
        victim = next(n for n in nodes if n.name == victim_name)
        dead = nodes.index(victim)

        latencies: list[float] = []
        lost: list[str] = []
        retries = 0
        done = 0
        gate = asyncio.Semaphore(args.concurrency)
        killed = asyncio.Event()

        async def login(i: int) -> None:
            nonlocal retries, done
            username = f"bench-user-{i:05d}"
            async with gate:
                started = time.perf_counter()
                for attempt in range(3 * len(nodes)):
                    client = clients[(i + attempt) % len(clients)]
                    if killed.is_set() and client is clients[dead]:
                        continue  # the balancer has taken the dead node out
                    try:
                        response = await client.post(
                            "/api/v1/auth/login",
                            json={"username": username, "password": USER_PASSWORD},
                        )
                    except httpx.TransportError:
                        retries += 1
                        continue
                    if response.status_code == 503:
                        retries += 1
                        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                        continue
                    if response.status_code == 200:
                        latencies.append((time.perf_counter() - started) * 1000)
                        done += 1
                        return
                    lost.append(f"{username}: {response.status_code} {response.text[:200]}")
                    return
                lost.append(f"{username}: no node answered")

        async def kill_when_a_third_is_done() -> float:
            while done < args.users // 3:
                await asyncio.sleep(0.01)
            victim.kill()
            killed.set()
            at = time.monotonic()
            while scan_owner(url, center["id"]) in (None, victim.name):
                if time.monotonic() - at > 120:
                    raise BenchError("the dead node's scan was not taken over within 120 s")
                await asyncio.sleep(0.05)
            return time.monotonic() - at

        started = time.perf_counter()
        killer = asyncio.create_task(kill_when_a_third_is_done())
        await asyncio.gather(*(login(i) for i in range(args.users)))
        wall = time.perf_counter() - started
        takeover_s = await killer
        return {
            "nodes": len(nodes),
            "workers_per_node": args.workers,
            "users": args.users,
            "concurrency": args.concurrency,
            "node_dead_after_s": Settings().node_dead_after_s,
            "heartbeat_interval_s": Settings().heartbeat_interval_s,
            "takeover_s": round(takeover_s, 2),
            "logins": done,
            "lost_logins": len(lost),
            "retried_requests": retries,
            "double_assignments": double_assignments(url),
            "logins_per_s": round(done / wall, 1) if wall else 0.0,
            "p50_ms": round(percentile(latencies, 50), 1),
            "p99_ms": round(percentile(latencies, 99), 1),
            "first_lost": lost[:3],
            "cpus": os.cpu_count(),
        }
    finally:
        silent.close()
        for client in clients:
            await client.aclose()


@contextlib.contextmanager
def cluster(args: argparse.Namespace) -> Iterator[tuple[list[Node], str]]:
    data_dir = Path(tempfile.mkdtemp(prefix="deskbroker-failover-"))
    backend = PostgresBackend(args.db)
    nodes: list[Node] = []
    try:
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
        # One after the other: each migrates nothing (done above) and builds its app.
        for i in range(args.nodes):
            nodes.append(start_node(args, backend.url, data_dir, f"node{i + 1}"))
        for node in nodes:
            wait_ready(node)
        yield nodes, backend.url
    finally:
        for node in nodes:
            node.stop()
        backend.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--db", default=DEFAULT_PG, help=f"a PostgreSQL server URL ({DEFAULT_PG})")
    parser.add_argument("--nodes", type=int, default=3, help="broker nodes (3)")
    parser.add_argument("--workers", type=int, default=1, help="HTTP workers per node (1)")
    parser.add_argument("--users", type=int, default=300, help="users who log in (300)")
    parser.add_argument("--concurrency", type=int, default=20, help="requests in flight (20)")
    parser.add_argument("--argon2-memory-kib", type=int, default=8192, help="argon2id memory")
    parser.add_argument("--argon2-time-cost", type=int, default=1, help="argon2id passes")
    parser.add_argument("--timeout", type=float, default=900, help="give up after this many s")
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes must be at least 2: one dies, another takes over")
    if args.users < 3 or args.concurrency < 1 or args.workers < 1:
        parser.error("--users must be at least 3, --concurrency and --workers at least 1")
    # seed() and broker_env() read these as login.py's arguments.
    args.desktops = args.users
    args.engine = True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with cluster(args) as (nodes, url):
            result = asyncio.run(asyncio.wait_for(storm(args, nodes, url), args.timeout))
    except (BenchError, TimeoutError) as exc:
        print(f"benchmark failed: {exc or 'timed out'}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")
    failed = result["lost_logins"] or result["double_assignments"] or result["takeover_s"] > 10
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""``deskbroker serve`` as a real process (a node of a cluster), for the tests that need
the command itself: its HTTP workers, its keep-alive, its heartbeat, its death.

Each node runs in its own process group, so killing it kills its HTTP workers too, as a
machine that dies (or systemd's default ``KillMode=control-group``) would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from tests.identity.directories import free_port

DESKBROKER = Path(sys.executable).with_name("deskbroker")


class BrokerNode:
    """One running ``deskbroker serve``; ``url`` reaches it."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL the node and its workers at once: no clean exit, no goodbye."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """A clean stop (SIGTERM), then SIGKILL whatever is left of the group."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


# Starts tried when the free port found was taken meanwhile.
PORT_TRIES = 3


def start_node(
    tmp: Path,
    *,
    database_url: str,
    secret_key: str,
    name: str = "node",
    args: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 120.0,
) -> BrokerNode:
    """Start ``deskbroker serve`` and wait until it answers /healthz (building the app
    takes seconds of CPU per worker, many more on a machine busy with other tests)."""
    data = tmp / f"{name}-data"
    log = tmp / f"{name}.log"
    environ = {
        **os.environ,
        "DESKBROKER_SECRET_KEY": secret_key,
        "DESKBROKER_BROKER_ID": name,
        "DESKBROKER_OUTBOUND_ALLOW": "127.0.0.0/8,::1/128",
        "DESKBROKER_LOG_LEVEL": "warning",
        **(env or {}),
    }
    deadline = time.monotonic() + ready_timeout_s
    # A free port may be taken by another process (the other test leg) before the node
    # binds it: it then exits at once, and starts again on another port.
    for attempt in range(PORT_TRIES):
        port = free_port()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    str(DESKBROKER),
                    "serve",
                    "--port",
                    str(port),
                    "--db",
                    database_url,
                    "--data-dir",
                    str(data),
                    *args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environ,
                start_new_session=True,
            )
        node = BrokerNode(proc, port, log)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                said = node.output()
                if "address already in use" in said and attempt + 1 < PORT_TRIES:
                    break
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{said}")
            try:
                if httpx.get(f"{node.url}/healthz", timeout=1).status_code == 200:
                    return node
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        else:
            break
    node.stop()
    raise RuntimeError(f"{name} did not answer within {ready_timeout_s} s:\n{node.output()}")


@contextmanager
def running_node(tmp: Path, **kwargs: object) -> Iterator[BrokerNode]:
    node = start_node(tmp, **kwargs)  # type: ignore[arg-type]
    try:
        yield node
    finally:
        node.stop()


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A migrated PostgreSQL database of its own on the shared test server, whatever
    backend the run tests: several nodes on one PostgreSQL is what a cluster is, and
    SQLite refuses it."""
    import uuid

    import psycopg

    from deskbroker.store.db import Database
    from deskbroker.store.migrate import upgrade
    from tests.conftest import PG_ADMIN, _pg_url

    name = f"deskbroker_nodes_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _pg_url(name)
    db = Database(url)
    upgrade(db)
    db.dispose()
    try:
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

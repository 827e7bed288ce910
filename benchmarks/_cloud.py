"""Shared by the benchmarks: a cloudsim in its own process, and a broker on a fresh DB."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

from deskbroker.bootstrap import ensure_defaults
from deskbroker.config import Settings
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Center


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def cloud(*args: str) -> Iterator[str]:
    """Run ``cloudsim openstack`` in a child process; yields its base URL."""
    port = free_port()
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloudsim.cli",
            "openstack",
            "--port",
            str(port),
            "--metadata-port",
            "-1",
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/_sim", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or child.poll() is not None:
                    raise RuntimeError("cloudsim did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()


def sim(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.request(method, f"{url}/_sim{path}", json=body, timeout=120)
    response.raise_for_status()
    return response.json() if response.content else None


@contextmanager
def broker(db: str | None, **overrides: Any) -> Iterator[BrokerContext]:
    """A migrated broker context on a fresh SQLite file or a throwaway PG database."""
    with tempfile.TemporaryDirectory(prefix="deskbroker-bench-") as tmp:
        dropper = None
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        if db and db.startswith("postgresql"):
            name = f"deskbroker_bench_{uuid.uuid4().hex[:8]}"
            admin = db.replace("postgresql+psycopg://", "postgresql://", 1)
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            url = admin.rsplit("/", 1)[0] + f"/{name}"

            def dropper() -> None:
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        settings = Settings(
            data_dir=Path(tmp) / "data",
            database_url=url,
            secret_key=secrets.token_urlsafe(48),
            outbound_allow="127.0.0.0/8",
            **overrides,
        )
        ctx = BrokerContext.from_settings(settings)
        try:
            ensure_defaults(ctx)
            yield ctx
        finally:
            ctx.db.dispose()
            if dropper is not None:
                dropper()


def add_center(ctx: BrokerContext, url: str, **params: Any) -> str:
    """An OpenStack center row, written directly so no scan runs yet."""
    with ctx.db.write() as session:
        from sqlalchemy import select

        from deskbroker.store.tables import Tenant

        tenant = session.scalars(select(Tenant).where(Tenant.name == "default")).one()
        center = Center(
            tenant_id=tenant.id,
            name="bench-cloud",
            kind="openstack",
            params={
                "auth_url": f"{url}/identity/v3",
                "project_name": "demo",
                "username": "demo",
                "default_network": "private",
                **params,
            },
            secrets_sealed=ctx.secrets.seal(json.dumps({"password": "password"})),
        )
        session.add(center)
        session.flush()
        return center.id


def emit(result: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps(result))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, str(value))
    Console().print(table)


os.environ.setdefault("PYTHONWARNINGS", "ignore")

#!/usr/bin/env python3
"""Backup and restore: how long ``deskbroker backup`` / ``restore`` take on a database
of N events (the table that grows), idle and while a writer appends events.

The database is a fresh SQLite file, or with ``--db postgresql://...`` a throwaway
database created on that server (``deskbroker_bench_<random>``, dropped at the end) and
restored into a second one. Figures: seconds for the backup, the backup under writes
(and how many events the writer committed meanwhile, which the backup does not hold),
and the restore; the backup's size in bytes.

Usage::

    .venv/bin/python benchmarks/backup.py --events 200000
    .venv/bin/python benchmarks/backup.py --json --db postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import func, insert, select

from deskbroker.store.backup import backup, restore
from deskbroker.store.db import Database
from deskbroker.store.migrate import upgrade
from deskbroker.store.tables import Event

BATCH = 5000


@contextmanager
def databases(admin_url: str | None, folder: Path) -> Iterator[tuple[str, str]]:
    """A source and an empty target database URL."""
    if admin_url is None:
        yield f"sqlite:///{folder / 'source.db'}", f"sqlite:///{folder / 'target.db'}"
        return
    names = [f"deskbroker_bench_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{names[0]}", f"{base}/{names[1]}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fill(db: Database, events: int) -> None:
    rows = [
        {"kind": "login", "actor": f"user{i}", "detail": {"client": "10.0.0.1", "n": i}}
        for i in range(BATCH)
    ]
    for start in range(0, events, BATCH):
        with db.connect_write() as conn:
            conn.execute(insert(Event), rows[: min(BATCH, events - start)])


def count(db: Database) -> int:
    with db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Event)) or 0)


def run(events: int, admin_url: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with databases(admin_url, folder) as (source_url, target_url):
            source = Database(source_url)
            upgrade(source)
            fill(source, events)
            started = time.perf_counter()
            idle = backup(source, folder / "idle.backup")
            idle_s = time.perf_counter() - started

            stop = threading.Event()
            written = [0]

            def writer() -> None:
                while not stop.is_set():
                    with source.connect_write() as conn:
                        conn.execute(insert(Event).values(kind="login", actor="writer"))
                    written[0] += 1

            thread = threading.Thread(target=writer, daemon=True)
            thread.start()
            started = time.perf_counter()
            before = written[0]
            backup(source, folder / "busy.backup")
            busy_s = time.perf_counter() - started
            during = written[0] - before
            stop.set()
            thread.join()
            source.dispose()

            target = Database(target_url)
            started = time.perf_counter()
            restore(target, folder / "busy.backup")
            restore_s = time.perf_counter() - started
            restored = count(target)
            target.dispose()
    return {
        "database": "postgresql" if admin_url else "sqlite",
        "events": events,
        "backup_bytes": idle.size,
        "backup_s": round(idle_s, 3),
        "backup_under_writes_s": round(busy_s, 3),
        "writes_during_backup": during,
        "restore_s": round(restore_s, 3),
        "events_restored": restored,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--db", default=None, help="a PostgreSQL server's admin URL")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(args.events, args.db)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>24}: {value}")


if __name__ == "__main__":
    main()

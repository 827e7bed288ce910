"""Pooled PostgreSQL connections are pinged only after sitting idle: a busy broker
spends no round trip per unit of work on a ping, and a connection the server dropped
is still never handed to a request after a quiet spell.

These run against the shared PostgreSQL server whichever leg the suite is on (no
schema is needed, only connections)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from deskbroker.store import db as store_db
from deskbroker.store.db import Database
from tests.conftest import PG_ADMIN, _pg_url


@pytest.fixture
def pg_database() -> Iterator[Database]:
    name = f"deskbroker_ping_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database = Database(_pg_url(name), pool_size=1)
    yield database
    database.dispose()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _backend(database: Database) -> int:
    with database.read() as session:
        return int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(pid: int) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
    # The server ends the backend a moment after it answers.
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        for _ in range(100):
            found = conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
            if found.fetchone() is None:
                return
            time.sleep(0.02)
    raise AssertionError(f"backend {pid} still there")


def test_a_connection_dropped_while_idle_is_replaced_before_use(
    pg_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_db, "PING_AFTER_IDLE_S", 0.2)
    first = _backend(pg_database)
    _terminate(first)
    time.sleep(0.3)
    # The ping finds the dropped connection; the unit runs on a new one, unaware.
    second = _backend(pg_database)
    assert second != first
    assert _backend(pg_database) == second


def test_a_busy_pool_pings_nothing_and_recovers_from_a_drop_in_one_unit(
    pg_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_db, "PING_AFTER_IDLE_S", 60.0)
    pings: list[object] = []
    real_ping = pg_database.engine.dialect.do_ping
    monkeypatch.setattr(
        pg_database.engine.dialect, "do_ping", lambda conn: pings.append(conn) or real_ping(conn)
    )
    first = _backend(pg_database)
    for _ in range(20):
        assert _backend(pg_database) == first
    assert pings == []
    _terminate(first)
    # Used again at once, the dropped connection fails that one unit (the request
    # answers 503), and the pool lets go of it: the next unit has a new connection.
    with pytest.raises(DBAPIError) as failed:
        _backend(pg_database)
    assert failed.value.connection_invalidated
    assert _backend(pg_database) != first

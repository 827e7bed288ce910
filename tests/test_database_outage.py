"""A database that goes away under load: 503s in words with Retry-After, then recovery
without a restart, and no desktop lost or handed out twice.

The PostgreSQL test runs on a cluster of its own (it stops it), under either
DESKBROKER_TEST_DB: the broker's behaviour is the same whichever database the rest of
the suite uses.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from deskbroker.api.app import create_app
from deskbroker.api.errors import DATABASE_BUSY, DATABASE_DOWN, database_outage
from deskbroker.bootstrap import ensure_defaults
from deskbroker.config import Settings
from deskbroker.services.context import BrokerContext
from deskbroker.services.database_health import DATABASE_CROSSED
from deskbroker.store.migrate import upgrade
from tests.conftest import LOOPBACK, PG_ADMIN
from tests.helpers import USER_PASSWORD, Api, wait_until
from tests.pg_cluster import ThrowawayCluster, throwaway_cluster

USERS = 40
DESKTOPS = 60
WORKERS = 8
RETRY_AFTER_S = 2


@dataclass
class Load:
    """Logins of USERS users from WORKERS threads, round and round, until stopped."""

    client: TestClient
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: list[tuple[float, str, int, dict[str, str], dict[str, object]]] = field(
        default_factory=list
    )

    def worker(self, n: int) -> None:
        turn = 0
        while not self.stop.is_set():
            user = f"user{(n + turn * WORKERS) % USERS}"
            turn += 1
            response = self.client.post(
                "/api/v1/auth/login", json={"username": user, "password": USER_PASSWORD}
            )
            with self.lock:
                self.answers.append(
                    (
                        time.monotonic(),
                        user,
                        response.status_code,
                        dict(response.headers),
                        response.json(),
                    )
                )

    def count(self, status: int, since: float = 0.0) -> int:
        with self.lock:
            return sum(1 for a in self.answers if a[2] == status and a[0] >= since)


def _wait(condition: Load, status: int, at_least: int, since: float, timeout: float) -> None:
    wait_until(
        lambda: condition.count(status, since) >= at_least,
        lambda: f"{at_least} answers {status}, got {Counter(a[2] for a in condition.answers)}",
        timeout_s=timeout,
    )


@pytest.fixture
def cluster() -> Iterator[ThrowawayCluster]:
    with throwaway_cluster() as server:
        yield server


def test_a_database_stopped_and_restarted_under_login_load(
    cluster: ThrowawayCluster, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=cluster.url,
        secret_key="test-secret-" + uuid.uuid4().hex,
        argon2_time_cost=1,
        argon2_memory_kib=64,
        db_pool_size=WORKERS,
        db_retry_after_s=RETRY_AFTER_S,
        # The seeded static desktops sit on 127.0.1.x, which the default policy denies.
        outbound_allow=LOOPBACK,
    )
    ctx = BrokerContext.from_settings(settings)
    upgrade(ctx.db)
    ensure_defaults(ctx)
    with TestClient(create_app(ctx)) as client:
        api = Api.with_admin(client, ctx)
        api.seed_pool(DESKTOPS, users=USERS)
        load = Load(client)
        threads = [threading.Thread(target=load.worker, args=(n,)) for n in range(WORKERS)]
        for thread in threads:
            thread.start()
        try:
            _wait(load, 200, USERS, 0.0, 60)  # everyone has logged in once
            cluster.crash()
            down = time.monotonic()
            _wait(load, 503, 20, down, 30)
            cluster.start()
            up = time.monotonic()
            # Without a restart of the broker: its pool's dead connections are replaced.
            _wait(load, 200, 2 * USERS, up, 60)
        finally:
            load.stop.set()
            for thread in threads:
                thread.join(timeout=60)

        statuses = Counter(a[2] for a in load.answers)
        assert set(statuses) == {200, 503}, statuses  # no 500, nothing else
        for _, _, status, headers, body in load.answers:
            if status == 503:
                assert headers["retry-after"] == str(RETRY_AFTER_S)
                assert headers["content-type"] == "application/problem+json"
                assert body["detail"] == DATABASE_DOWN.format(wait=RETRY_AFTER_S)
                assert "psycopg" not in str(body) and "SELECT" not in str(body)

        # Nothing half-written: one desktop per user, none held twice, and every desktop
        # a 200 answer handed out is held by that user.
        with ctx.db.read() as session:
            rows = session.execute(
                text(
                    "SELECT d.id, u.username FROM desktops d JOIN users u "
                    "ON u.id = d.assigned_user_id"
                )
            ).all()
        holder = {desktop: user for desktop, user in rows}
        per_user = Counter(user for _, user in rows)
        assert len(holder) == len(rows)
        assert max(per_user.values()) == 1, per_user
        assert set(per_user) == {f"user{i}" for i in range(USERS)}
        for _, user, status, _, body in load.answers:
            if status == 200:
                offers = body["offers"]
                assert isinstance(offers, list) and len(offers) == 1
                assert offers[0]["status"] == "assigned"
                assert holder[offers[0]["desktop"]["id"]] == user
    ctx.db.dispose()


def test_a_locked_sqlite_database_is_called_busy(tmp_path: Path) -> None:
    """SQLite answers "database is locked" when another writer holds it past the busy
    timeout (the CLI, a second broker on the same file): that is a 503 too."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
    try:
        with pytest.raises(OperationalError) as caught, engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()
    assert database_outage(caught.value) == DATABASE_BUSY


def test_a_unit_postgresql_rolls_back_to_break_a_deadlock_is_told_to_try_again() -> None:
    """Two units that take two locks in opposite orders: PostgreSQL rolls one back
    (deadlock detected). Nothing of it was written and the same request goes through
    again: a 503 with Retry-After in words, not a 500. On the shared server whatever
    DESKBROKER_TEST_DB says (SQLite's one writer never deadlocks); advisory locks of
    keys of this run's own, so no table and no other test is touched."""
    engine = create_engine(PG_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1))
    keys = [uuid.uuid4().int % 2**62, uuid.uuid4().int % 2**62]
    take = text("SELECT pg_advisory_xact_lock(:key)")
    both_hold_one = threading.Barrier(2, timeout=30)
    failures: list[BaseException] = []

    def cross(first: int, second: int) -> None:
        try:
            with engine.begin() as conn:
                conn.execute(take, {"key": first})
                both_hold_one.wait()
                conn.execute(take, {"key": second})
        except OperationalError as exc:
            failures.append(exc)

    try:
        units = [
            threading.Thread(target=cross, args=order)
            for order in ((keys[0], keys[1]), (keys[1], keys[0]))
        ]
        for unit in units:
            unit.start()
        for unit in units:
            unit.join(60)
    finally:
        engine.dispose()
    [failure] = failures
    assert database_outage(failure) == DATABASE_CROSSED


def test_a_database_that_is_not_there_is_an_outage(tmp_path: Path) -> None:
    """Nothing listens where the database should be: every request is a 503 in words,
    the health check still answers."""
    from tests.identity.directories import free_port

    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres",
        secret_key="test-secret-" + uuid.uuid4().hex,
        db_retry_after_s=RETRY_AFTER_S,
    )
    ctx = BrokerContext.from_settings(settings)
    with TestClient(create_app(ctx)) as client:
        login = client.post("/api/v1/auth/login", json={"username": "a", "password": "b"})
        desktops = client.get("/api/v1/client/desktops", headers={"Authorization": "Bearer x"})
        health = client.get("/healthz")
    assert login.status_code == 503, login.text
    assert login.headers["retry-after"] == str(RETRY_AFTER_S)
    assert login.json()["detail"] == DATABASE_DOWN.format(wait=RETRY_AFTER_S)
    assert login.json()["title"] == "Database unavailable"
    assert desktops.status_code == 401  # a bad token needs no database
    assert health.status_code == 200
    ctx.db.dispose()

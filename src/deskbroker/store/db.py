"""Engines and units of work for SQLite (embedded) and PostgreSQL (cluster)."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from deskbroker import metrics
from deskbroker.write_guard import write_unit

# The unit of work a service hands to store functions: named here so that code outside
# store/ types it without importing SQLAlchemy (the import contract's "only store").
Unit = Session

# Counts SQL statements for whoever set it (the login-path test, the benchmark).
statement_counter: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "statement_counter", default=None
)

_TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")

log = logging.getLogger(__name__)

# The work each open write unit of this thread leaves for after its commit (innermost
# last): see ``after_commit``.
_after = threading.local()

AfterCommit = Callable[["Database"], None]

# How many units of work this thread has open (read and write, ORM and Core).
_units = threading.local()


def units_open() -> int:
    """How many units of work this thread has open: more than none means a further
    unit would hold a second pooled connection (see ``_one_more_unit``)."""
    return int(getattr(_units, "depth", 0))


@contextmanager
def _one_more_unit() -> Iterator[None]:
    # A thread in a unit that opens another holds two connections; a node whose
    # threads each hold one and wait for a second waits for the pool's timeout (behind
    # PgBouncer, for a free server connection: every request frozen for minutes). So
    # what may be called inside a unit can ask whether one is open and not read.
    _units.depth = units_open() + 1
    try:
        yield
    finally:
        _units.depth = units_open() - 1


def after_commit(work: AfterCommit) -> None:
    """Run ``work`` once the write unit open on this thread has committed, in units of
    its own; nothing when none is open (a read changes nothing to look at again) or when
    the unit rolls back.

    For checks that no lock can make safe across brokers without ordering every writer:
    what a unit read may have changed on another broker before this one committed, so it
    is looked at again once both are visible (``store.membership``'s guard).

    Work equal to some already left by the unit is not left again: a unit that writes a
    thousand pools asks for one look, not a thousand."""
    stack: list[list[AfterCommit]] | None = getattr(_after, "stack", None)
    if stack and work not in stack[-1]:
        stack[-1].append(work)


@contextmanager
def _leaving_work() -> Iterator[list[AfterCommit]]:
    stack: list[list[AfterCommit]] = getattr(_after, "stack", None) or []
    _after.stack = stack
    left: list[AfterCommit] = []
    stack.append(left)
    try:
        yield left
    finally:
        stack.pop()


def _count_statement(
    conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool
) -> None:
    # The head is enough (and copying a long statement twice per run is not free).
    if statement[:16].lstrip().upper().startswith(_TRANSACTION_CONTROL):
        return
    metrics.SQL_STATEMENTS.inc()
    sink = statement_counter.get()
    if sink is not None:
        sink.append(statement)


# A connection back in the pool for less than this is handed out without a ping: under
# load every connection comes back within milliseconds, and a ping per unit of work was
# a round trip (a fifth of a sign-in's wall time under load) spent learning nothing.
# One that sat longer is pinged, as after a quiet night or a database restart. A
# connection that broke sooner fails its first statement, the request answers 503, and
# the pool drops every connection made before that failure (SQLAlchemy's invalidation),
# so the next request gets a fresh one.
PING_AFTER_IDLE_S = 1.0


def _ping_after_idle(engine: Engine) -> None:
    """Ping a pooled connection on checkout only when it sat idle past
    ``PING_AFTER_IDLE_S``; a failed ping makes the pool replace it (the same as
    ``pool_pre_ping``, which pings on every checkout)."""

    @event.listens_for(engine, "connect")
    def _made(dbapi_conn: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _maybe_ping(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        returned = record.info.get("returned_at")
        if returned is not None and time.monotonic() - returned < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            # The pool discards this connection and checks out another.
            raise DisconnectionError("a pooled connection failed its ping") from exc


class Database:
    """One engine plus read and write units of work.

    On SQLite a write unit begins with ``BEGIN IMMEDIATE`` so that concurrent claims
    queue for the write lock instead of failing on a stale snapshot.
    """

    def __init__(self, url: str, pool_size: int = 10, *, pgbouncer: bool = False) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.is_postgres = parsed.get_backend_name() == "postgresql"
        if self.is_postgres and parsed.drivername == "postgresql":
            url = str(parsed.set(drivername="postgresql+psycopg"))
            self.url = url
        self.pgbouncer = pgbouncer
        self.engine = self._make_engine(url, pool_size)
        event.listen(self.engine, "before_cursor_execute", _count_statement)
        self._write_lock = threading.Lock() if self.is_sqlite else None
        self._write_engine = self.engine.execution_options(deskbroker_write=True)
        self._reader = sessionmaker(bind=self.engine, expire_on_commit=False)
        self._writer = sessionmaker(bind=self._write_engine, expire_on_commit=False)

    def _make_engine(self, url: str, pool_size: int) -> Engine:
        if not self.is_sqlite:
            # Behind PgBouncer in transaction mode each transaction may run on another
            # server connection: psycopg's server-side prepared statements (made after a
            # statement's fifth run) would be unknown there. The broker keeps no other
            # session state (no SET, LISTEN or session advisory locks; its advisory locks
            # are the transaction's), so this is all transaction pooling needs.
            connect_args: dict[str, Any] = {"prepare_threshold": None} if self.pgbouncer else {}
            pg_engine = create_engine(
                url,
                pool_size=pool_size,
                max_overflow=pool_size * 2,
                connect_args=connect_args,
            )
            _ping_after_idle(pg_engine)
            return pg_engine
        database = make_url(url).database
        memory = database in (None, "", ":memory:")
        if not memory and database is not None:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            # The database holds password hashes and sealed secrets: the broker's user only
            # (SQLite gives its -wal and -shm files the database file's mode).
            Path(database).touch(mode=0o600, exist_ok=True)
            if Path(database).stat().st_mode & 0o077:
                Path(database).chmod(0o600)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=StaticPool if memory else None,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, record: Any) -> None:
            # Take transaction control from pysqlite so BEGIN IMMEDIATE is ours to send.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            write = conn.get_execution_options().get("deskbroker_write", False)
            # Straight to the driver: transaction control is not worth a statement's
            # bookkeeping (and is not counted as one).
            conn.connection.driver_connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A unit of work that only reads."""
        with _one_more_unit(), self._reader() as session, session.begin():
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A unit of work that commits on success and rolls back on any error.

        While it is open, center and identity calls on this thread are refused
        (``deskbroker.write_guard``): nothing slow may hold the write lock."""
        with _leaving_work() as left:
            if self._write_lock is None:
                with _one_more_unit(), write_unit(), self._writer() as session, session.begin():
                    yield session
            else:
                # SQLite has one writer at a time; queueing on a lock in this process
                # wakes the next writer at once, where SQLite's busy handler would sleep
                # and retry.
                with (
                    _one_more_unit(),
                    write_unit(),
                    self._write_lock,
                    self._writer() as session,
                    session.begin(),
                ):
                    yield session
        self._run(left)

    @contextmanager
    def connect_read(self) -> Iterator[Connection]:
        """A Core unit of work that only reads: no ORM session, for hot paths (the
        engine's tick) where a session's bookkeeping would cost more than the SQL."""
        with _one_more_unit(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def connect_write(self) -> Iterator[Connection]:
        """``write`` for Core statements: the same locking, commit and rollback."""
        with _leaving_work() as left:
            if self._write_lock is None:
                with _one_more_unit(), write_unit(), self._write_engine.begin() as conn:
                    yield conn
            else:
                with (
                    _one_more_unit(),
                    write_unit(),
                    self._write_lock,
                    self._write_engine.begin() as conn,
                ):
                    yield conn
        self._run(left)

    def _run(self, left: list[AfterCommit]) -> None:
        # The unit is committed and its locks are gone: a failure here cannot undo it, so
        # it is logged and the caller's work stands.
        for work in left:
            try:
                work(self)
            except Exception:
                log.exception("work left for after a commit failed")

    def dispose(self) -> None:
        self.engine.dispose()

"""Backup and restore (``deskbroker backup`` / ``restore``) on the leg's database: a busy
broker's backup holds one consistent moment, and a new broker restored from it finds
every assignment, session and event of that moment."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import select, text

from deskbroker.config import Settings
from deskbroker.domain.plans import AgentEvent
from deskbroker.errors import Conflict
from deskbroker.services import sessions
from deskbroker.services.context import BrokerContext
from deskbroker.services.login import LoginService
from deskbroker.store.backup import BackupError, backup, backup_revision, code_revision, restore
from deskbroker.store.db import Database
from deskbroker.store.migrate import current_revision, upgrade
from deskbroker.store.tables import Desktop, Event, SessionRow, User
from tests.conftest import BACKEND, PG_ADMIN, _pg_url
from tests.helpers import USER_PASSWORD, Api, wait_until

USERS = 80
WRITERS = 3


@pytest.fixture
def fresh_db(tmp_path: Path) -> Iterator[Callable[[], str]]:
    """New, empty databases of the leg's kind: SQLite files, or PostgreSQL databases
    created here and dropped afterwards."""
    created: list[str] = []
    numbers = itertools.count()

    def make() -> str:
        if BACKEND == "postgresql":
            name = f"deskbroker_restore_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            created.append(name)
            return _pg_url(name)
        return f"sqlite:///{tmp_path / f'restored-{next(numbers)}.db'}"

    yield make
    for name in created:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _add_users(api: Api, ctx: BrokerContext) -> None:
    hashed = ctx.hashing.hash(USER_PASSWORD)
    tenant = api.get("identity-sources?kind=local")["items"][0]["tenant_id"]
    with ctx.db.write() as session:
        session.add_all(
            User(
                tenant_id=tenant,
                identity_source_id=api.source_id(),
                username=f"u{i:03d}",
                password_hash=hashed,
                groups=[],
                attributes={},
            )
            for i in range(USERS)
        )


def _events(db: Database) -> dict[int, tuple[str, str | None, Any]]:
    with db.read() as session:
        return {
            e.id: (e.kind, e.user_id, e.detail)
            for e in session.scalars(select(Event).order_by(Event.id))
        }


def _assignments(db: Database) -> dict[str, str]:
    with db.read() as session:
        rows = session.execute(
            select(Desktop.id, Desktop.assigned_user_id).where(
                Desktop.assigned_user_id.is_not(None)
            )
        )
        return {desktop: str(user) for desktop, user in rows}


def _sessions(db: Database) -> dict[str, tuple[str, str | None, str]]:
    with db.read() as session:
        return {
            s.id: (s.desktop_id, s.user_id, s.state) for s in session.scalars(select(SessionRow))
        }


def _assigned_at_login(events: dict[int, tuple[str, str | None, Any]]) -> set[str | None]:
    # The users whose login claimed a desktop (the admin's own login claimed none).
    return {
        user for kind, user, detail in events.values() if kind == "login" and detail.get("assigned")
    }


class Busy:
    """Users signing in and their agents reporting sessions, on threads, until stopped."""

    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx
        self.login = LoginService(ctx)
        self.next_user = itertools.count()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(WRITERS)]

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                i = next(self.next_user)
                if i >= USERS:
                    return
                name = f"u{i:03d}"
                offer = self.login.login(name, USER_PASSWORD).offers[0]
                assert offer.status == "assigned" and offer.desktop is not None, offer
                sessions.record(
                    self.ctx, offer.desktop.id, AgentEvent.LOGIN, user=name, session_key=f"s-{i}"
                )
        except BaseException as exc:  # reported by the test, not lost on a thread
            self.errors.append(exc)

    def __enter__(self) -> Busy:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)
        assert not self.errors, self.errors


def test_backup_of_a_busy_broker_restores_every_assignment_session_and_event(
    api: Api, ctx: BrokerContext, settings: Settings, tmp_path: Path, fresh_db: Callable[[], str]
) -> None:
    api.seed_pool(USERS)
    _add_users(api, ctx)
    file = tmp_path / "broker.backup"
    written_during: list[int] = []

    def during_copy(done: int, total: int) -> None:
        # The first report comes once the backup's snapshot is taken: let the broker
        # commit more logins and sessions before the copy goes on.
        if not written_during:
            seen = len(_events(ctx.db))
            wait_until(lambda: len(_events(ctx.db)) >= seen + 4, "logins during the backup")
            written_during.append(len(_events(ctx.db)) - seen)

    with Busy(ctx):
        wait_until(lambda: len(_sessions(ctx.db)) >= 5, "the first sessions")
        before = _events(ctx.db)
        info = backup(ctx.db, file, during_copy, pages_per_step=4)
        after = _events(ctx.db)
    final = _events(ctx.db)
    assert written_during and written_during[0] >= 4
    assert info.revision == code_revision() and info.size > 0
    assert file.stat().st_mode & 0o077 == 0, "the backup holds secrets: owner only"

    restored_db = Database(fresh_db())
    try:
        outcome = restore(restored_db, file)
        assert outcome.revision_after == code_revision() and not outcome.upgraded
        events = _events(restored_db)
        # One moment: everything committed before the backup began, nothing of what was
        # committed while it ran, every row as the broker wrote it.
        assert set(before) <= set(events) < set(after)
        assert all(final[i] == events[i] for i in events)
        logged_in = _assigned_at_login(events)
        assignments = _assignments(restored_db)
        source_assignments = _assignments(ctx.db)
        assert set(assignments.values()) == logged_in >= _assigned_at_login(before)
        assert all(source_assignments[d] == u for d, u in assignments.items())
        opened = {
            detail["session_id"] for kind, _, detail in events.values() if kind == "session.login"
        }
        restored_sessions = _sessions(restored_db)
        assert set(restored_sessions) == opened and len(opened) >= 5
        source_sessions = _sessions(ctx.db)
        assert all(source_sessions[s] == row for s, row in restored_sessions.items())

        # The restored broker works: a user signs in again and gets the same desktop.
        restored = BrokerContext.from_settings(
            settings.model_copy(update={"database_url": restored_db.url})
        )
        try:
            desktop, user = next(iter(assignments.items()))
            with restored.db.read() as session:
                name = session.scalar(select(User.username).where(User.id == user))
            offer = LoginService(restored).login(str(name), USER_PASSWORD).offers[0]
            assert offer.status == "assigned" and offer.desktop and offer.desktop.id == desktop
        finally:
            restored.db.dispose()
    finally:
        restored_db.dispose()


def test_restore_refuses_a_full_database_a_foreign_file_and_a_newer_schema(
    api: Api, ctx: BrokerContext, tmp_path: Path, fresh_db: Callable[[], str]
) -> None:
    api.seed_pool(2, users=1)
    api.login("user0")
    file = tmp_path / "broker.backup"
    backup(ctx.db, file)
    assignments = _assignments(ctx.db)

    # A database holding rows is left alone without --force.
    target = Database(fresh_db())
    try:
        upgrade(target)  # a migrated database with its first row (broker_state) is not empty
        with pytest.raises(Conflict, match=r"not empty.*--force"):
            restore(target, file)
        assert _assignments(target) == {}
        assert restore(target, file, force=True).revision_after == code_revision()
        assert _assignments(target) == assignments
        # The forced restore replaced what was there: restoring again needs --force again.
        with pytest.raises(Conflict):
            restore(target, file)

        # A backup from a newer broker (a revision this code does not know) is refused.
        with target.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
        newer = tmp_path / "newer.backup"
        backup(target, newer)
        assert backup_revision(newer) == "9999_future"
    finally:
        target.dispose()
    empty = Database(fresh_db())
    try:
        with pytest.raises(BackupError, match=r"9999_future.*does not know"):
            restore(empty, newer)
        assert current_revision(empty) is None, "a refused restore wrote nothing"
        # Neither a file of another kind nor one that is no backup at all.
        junk = tmp_path / "junk.backup"
        junk.write_bytes(b"not a backup\n" * 10)
        with pytest.raises(BackupError, match="neither"):
            restore(empty, junk)
        with pytest.raises(BackupError, match="directory"):
            backup(ctx.db, tmp_path)
    finally:
        empty.dispose()


def test_cli_backs_up_and_restores(
    ctx: BrokerContext, settings: Settings, tmp_path: Path, fresh_db: Callable[[], str]
) -> None:
    """The commands, as an operator runs them: exit codes and words."""
    file = tmp_path / "cli.backup"
    env = {"DESKBROKER_SECRET_KEY": settings.secret_key, "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "deskbroker.cli"]
    done = subprocess.run(
        [*cli, "backup", str(file), "--db", ctx.db.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "backed up" in done.stdout and file.exists()
    again = subprocess.run(
        [*cli, "restore", str(file), "--db", ctx.db.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert again.returncode == 2 and "not empty" in again.stdout, again.stdout + again.stderr
    target = fresh_db()
    fresh = subprocess.run(
        [*cli, "restore", str(file), "--db", target],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert fresh.returncode == 0 and "restored" in fresh.stdout, fresh.stdout + fresh.stderr


def test_an_older_backup_is_restored_and_upgraded(
    tmp_path: Path, fresh_db: Callable[[], str]
) -> None:
    """A backup taken at the first revision comes back at this version's, its rows kept."""
    old = Database(fresh_db())
    file = tmp_path / "old.backup"
    try:
        upgrade(old, "0001")
        with old.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO tenants (id, name, display_name, created_at, updated_at) "
                    "VALUES ('t1', 'acme', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
        assert backup(old, file).revision == "0001"
    finally:
        old.dispose()
    assert code_revision() != "0001"
    new = Database(fresh_db())
    try:
        outcome = restore(new, file)
        assert outcome.upgraded and outcome.backup.revision == "0001"
        assert outcome.revision_after == code_revision() == current_revision(new)
        with new.engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM tenants")).scalars().all() == ["acme"]
    finally:
        new.dispose()

"""Backups of the broker's database and their restore (``deskbroker backup`` / ``restore``).

SQLite: an online, consistent copy through SQLite's backup API, taken inside one read
transaction of the source so that the broker's writes during the copy neither restart it
nor leak into it (WAL gives the reader its snapshot). The backup is itself a SQLite
database file (journal mode DELETE, so it opens without its -wal and -shm companions).

PostgreSQL: ``pg_dump -Fc`` (one consistent snapshot, a serialisable transaction) and
``pg_restore --single-transaction`` (all or nothing). The password travels in the child's
environment (``PGPASSWORD``), never on its command line, where ``ps`` would show it.

A restore refuses a backup of the other kind, a backup whose schema revision this code
does not know (taken by a newer broker), and a database that holds rows unless forced;
an older backup is brought to the code's revision by the same Alembic migrations.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import inspect, literal, select, table, text
from sqlalchemy.engine import make_url

from deskbroker.errors import BadRequest, Conflict
from deskbroker.store.db import Database
from deskbroker.store.migrate import alembic_config, current_revision, upgrade

# done, total: in pages (SQLite) or tables (PostgreSQL).
Progress = Callable[[int, int], None]

SQLITE_MAGIC = b"SQLite format 3\x00"
PGDUMP_MAGIC = b"PGDMP"
# Pages per step of SQLite's backup: small enough for a live progress bar, large enough
# that a 100 MB database is not a hundred thousand Python calls.
_PAGES_PER_STEP = 512
_TIMEOUT_S = 3600


class BackupError(BadRequest):
    """A backup or restore that could not be done, said in words."""


@dataclass(frozen=True)
class BackupInfo:
    """What a finished backup or restore holds."""

    kind: str  # "sqlite" or "postgresql"
    path: Path
    revision: str | None  # the schema revision the backup was taken at
    size: int


@dataclass(frozen=True)
class RestoreInfo:
    backup: BackupInfo
    revision_after: str | None  # the database's revision once restored (and upgraded)
    upgraded: bool


def code_revision() -> str:
    """The schema revision this code's migrations end at (the single head)."""
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    if len(heads) != 1:
        raise BackupError(f"the migrations have {len(heads)} heads ({', '.join(heads)})")
    return heads[0]


def _known_revision(revision: str | None) -> bool:
    if revision is None:
        return False
    try:
        found = ScriptDirectory.from_config(alembic_config("sqlite://")).get_revision(revision)
    except CommandError:
        return False
    return found is not None


def backup_kind(path: Path) -> str:
    """``sqlite`` or ``postgresql``, read from the file's first bytes."""
    try:
        with path.open("rb") as handle:
            head = handle.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from exc
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    if head.startswith(PGDUMP_MAGIC):
        return "postgresql"
    raise BackupError(f"{path} is neither a deskbroker SQLite backup nor a pg_dump -Fc archive")


def _kind_of(db: Database) -> str:
    if db.is_sqlite:
        return "sqlite"
    if db.is_postgres:
        return "postgresql"
    raise BackupError("only SQLite and PostgreSQL databases can be backed up")


def _sqlite_path(db: Database) -> Path:
    database = make_url(db.url).database
    if database in (None, "", ":memory:"):
        raise BackupError("an in-memory database has nothing on disk to back up or restore")
    assert database is not None
    return Path(database)


def _private_file(path: Path) -> None:
    # The backup holds password hashes and sealed secrets: the broker's user only.
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)


def _check_target(path: Path) -> None:
    if path.is_dir():
        raise BackupError(f"{path} is a directory; name the backup file")
    if not path.parent.is_dir():
        raise BackupError(f"folder {path.parent} does not exist")


def backup(
    db: Database,
    path: Path,
    progress: Progress | None = None,
    *,
    pages_per_step: int = _PAGES_PER_STEP,
) -> BackupInfo:
    """Write a consistent backup of ``db`` to ``path`` while the broker keeps running.
    The file appears only once complete (written next to it, then renamed).
    ``pages_per_step``: how much SQLite's backup copies between two progress reports."""
    kind = _kind_of(db)
    _check_target(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    _private_file(partial)
    try:
        if kind == "sqlite":
            revision = _sqlite_backup(_sqlite_path(db), partial, progress, pages_per_step)
        else:
            revision = current_revision(db)
            _pg_dump(db, partial, progress)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return BackupInfo(kind, path, revision, path.stat().st_size)


def _sqlite_backup(
    source: Path, target: Path, progress: Progress | None, pages_per_step: int
) -> str | None:
    src = sqlite3.connect(source, timeout=30, isolation_level=None)
    dst = sqlite3.connect(target, isolation_level=None)
    try:
        # One read transaction over the whole copy: its snapshot is what the backup holds,
        # whatever the broker commits meanwhile (WAL lets both go on).
        src.execute("BEGIN")
        revision = _revision_in(src)
        src.backup(
            dst,
            pages=max(1, pages_per_step),
            progress=(lambda _s, left, total: progress(total - left, total)) if progress else None,
        )
        src.execute("ROLLBACK")
        # The copy keeps the source's WAL flag; a backup file should open on its own.
        dst.execute("PRAGMA journal_mode=DELETE")
        check = dst.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise BackupError(f"the copy failed its integrity check: {check}")
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite backup failed: {exc}") from exc
    finally:
        src.close()
        dst.close()
    return revision


def _revision_in(conn: sqlite3.Connection) -> str | None:
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:
        return None
    return str(row[0]) if row else None


def _libpq(db: Database) -> tuple[str, dict[str, str]]:
    """A libpq connection URI without the password, and the environment carrying it."""
    url = make_url(db.url)
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    plain = url.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _run_verbose(
    command: list[str], env: dict[str, str], marker: str, total: int, progress: Progress | None
) -> None:
    """Run a pg tool with ``-v``, counting its ``marker`` lines as progress."""
    done = 0
    tail: list[str] = []
    with subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    ) as child:
        assert child.stderr is not None
        for line in child.stderr:
            tail = [*tail[-9:], line.rstrip()]
            if marker in line:
                done += 1
                if progress:
                    progress(min(done, total), total)
        code = child.wait(timeout=_TIMEOUT_S)
    if code != 0:
        errors = [t for t in tail if "error" in t.lower()] or tail
        raise BackupError(f"{command[0]} failed (exit {code}): {' '.join(errors[-3:])}")
    if progress:
        progress(total, total)


def _pg_dump(db: Database, target: Path, progress: Progress | None) -> None:
    uri, env = _libpq(db)
    with db.read() as session:
        tables = len(inspect(session.connection()).get_table_names())
    _run_verbose(
        ["pg_dump", "-Fc", "-v", "--no-owner", "--no-privileges", "-f", str(target), "-d", uri],
        env,
        "dumping contents of table",
        tables,
        progress,
    )


def _pg_backup_revision(path: Path) -> str | None:
    # The data of one table as SQL text: the COPY block of alembic_version.
    done = subprocess.run(
        ["pg_restore", "--data-only", "--table=alembic_version", "-f", "-", str(path)],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise BackupError(f"pg_restore cannot read {path}: {done.stderr.strip()[-300:]}")
    block = re.search(
        r"COPY \S*alembic_version \(version_num\) FROM stdin;\n(.*?)\n\\\.", done.stdout, re.S
    )
    if block is None:
        return None
    lines = [line for line in block.group(1).splitlines() if line]
    return lines[0] if lines else None


def backup_revision(path: Path) -> str | None:
    """The schema revision a backup file was taken at (None: not a broker database)."""
    if backup_kind(path) == "postgresql":
        return _pg_backup_revision(path)
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {path}: {exc}") from exc
    try:
        return _revision_in(conn)
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a readable SQLite database: {exc}") from exc
    finally:
        conn.close()


def holds_rows(db: Database) -> list[str]:
    """The tables of ``db`` that hold at least one row (the Alembic bookkeeping aside):
    a database that only went through ``db upgrade`` is still empty."""
    with db.read() as session:
        names = inspect(session.connection()).get_table_names()
        return [
            name
            for name in sorted(names)
            if name != "alembic_version"
            and session.scalar(select(literal(1)).select_from(table(name)).limit(1)) is not None
        ]


def _drop_everything(db: Database) -> None:
    # CASCADE takes foreign keys (and owned sequences) along, in any order.
    with db.engine.begin() as conn:
        for name in inspect(conn).get_table_names():
            conn.execute(text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))


def restore(
    db: Database, path: Path, *, force: bool = False, progress: Progress | None = None
) -> RestoreInfo:
    """Restore ``path`` into ``db`` and bring it to the code's schema revision.

    The broker must be stopped meanwhile (the documented procedure): a restore replaces
    the whole database under whoever else has it open."""
    kind = _kind_of(db)
    found = backup_kind(path)
    if found != kind:
        raise BackupError(f"{path} is a {found} backup and the database is {kind}")
    revision = backup_revision(path)
    if revision is None:
        raise BackupError(f"{path} holds no schema revision: not a deskbroker database")
    if not _known_revision(revision):
        raise BackupError(
            f"{path} is at schema revision {revision}, which this deskbroker does not know "
            f"(it ends at {code_revision()}): restore it with the version that took it"
        )
    filled = holds_rows(db)
    if filled and not force:
        raise Conflict(
            f"the database is not empty ({', '.join(filled[:5])}"
            f"{', ...' if len(filled) > 5 else ''} hold rows); restore into an empty one, "
            "or pass --force to replace what it holds"
        )
    if kind == "sqlite":
        _sqlite_restore(path, _sqlite_path(db), progress)
    else:
        if filled or force:
            _drop_everything(db)
        _pg_restore(db, path, progress)
    db.engine.dispose()  # connections opened before the copy may cache the old schema
    head = code_revision()
    upgraded = revision != head
    upgrade(db)
    info = BackupInfo(kind, path, revision, path.stat().st_size)
    return RestoreInfo(info, current_revision(db), upgraded)


def _sqlite_restore(source: Path, target: Path, progress: Progress | None) -> None:
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target, timeout=30, isolation_level=None)
    try:
        src.backup(
            dst,
            pages=_PAGES_PER_STEP,
            progress=(lambda _s, left, total: progress(total - left, total)) if progress else None,
        )
        # Back to the broker's journal mode (the backup file was DELETE).
        dst.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite restore failed: {exc}") from exc
    finally:
        src.close()
        dst.close()


def _pg_restore(db: Database, path: Path, progress: Progress | None) -> None:
    uri, env = _libpq(db)
    listing = subprocess.run(
        ["pg_restore", "-l", str(path)],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
        check=False,
    )
    if listing.returncode != 0:
        raise BackupError(f"pg_restore cannot list {path}: {listing.stderr.strip()[-300:]}")
    tables = sum(1 for line in listing.stdout.splitlines() if " TABLE DATA " in line)
    _run_verbose(
        [
            "pg_restore",
            "-v",
            "--no-owner",
            "--no-privileges",
            "--single-transaction",
            "--exit-on-error",
            "-d",
            uri,
            str(path),
        ],
        env,
        "processing data for table",
        tables,
        progress,
    )


__all__ = [
    "BackupError",
    "BackupInfo",
    "RestoreInfo",
    "backup",
    "backup_kind",
    "backup_revision",
    "code_revision",
    "holds_rows",
    "restore",
]

"""Schema migrations through Alembic, run by ``deskbroker db upgrade`` and at start-up.

Rolling upgrades: every migration declares its ``phase``. An **expand** migration only
adds (tables, nullable columns or columns with a server default, indexes): a node of the
previous version runs on the new schema unchanged, so a node applies them itself when it
starts. A **contract** migration removes or tightens what the previous version still
uses (drops, renames, a column made NOT NULL); it is applied only when asked for
(``deskbroker db upgrade --contract``), once no node of an older version runs. A node
that finds the schema newer than it knows (a newer node migrated it) runs on it as it is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import insert, select

from deskbroker.store.db import Database
from deskbroker.store.tables import BrokerState

MIGRATIONS = Path(__file__).parent / "migrations"


class Phase(enum.StrEnum):
    EXPAND = "expand"
    CONTRACT = "contract"


@dataclass(frozen=True)
class Outcome:
    """What an upgrade did: the revision it left, the contract migrations it left
    pending, and whether the database was already ahead of this code."""

    revision: str | None
    contract_pending: tuple[str, ...] = ()
    ahead: bool = False


def alembic_config(url: str, migrations: Path = MIGRATIONS) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def phase_of(script: Script) -> Phase:
    """A migration's declared phase; a migration that declares none is an error."""
    declared = getattr(script.module, "phase", None)
    try:
        return Phase(str(declared))
    except ValueError:
        raise CommandError(
            f"migration {script.revision} declares phase {declared!r}: "
            "it must say phase = 'expand' or 'contract'"
        ) from None


def pending(db: Database, migrations: Path = MIGRATIONS) -> tuple[list[Script], bool]:
    """The migrations not yet applied, oldest first, and whether the database is at a
    revision this code does not know (a newer version migrated it)."""
    scripts = ScriptDirectory.from_config(alembic_config(db.url, migrations))
    current = current_revision(db)
    if current is not None:
        try:
            scripts.get_revision(current)
        except CommandError:
            return [], True
    todo = list(scripts.iterate_revisions("heads", current))
    todo.reverse()
    return todo, False


def upgrade(
    db: Database,
    revision: str = "head",
    *,
    contract: bool = False,
    migrations: Path = MIGRATIONS,
) -> Outcome:
    """Bring the schema forward and make sure the broker-state row exists.

    Expand migrations are applied up to ``revision``; the first contract migration stops
    the run unless ``contract`` is set. A database ahead of this code is left as it is."""
    todo, ahead = pending(db, migrations)
    if revision != "head":
        wanted = [s.revision for s in todo]
        todo = todo[: wanted.index(revision) + 1] if revision in wanted else []
    target: str | None = None
    held: list[str] = []
    for script in todo:
        if phase_of(script) is Phase.CONTRACT and not contract:
            held = [s.revision for s in todo[todo.index(script) :]]
            break
        target = script.revision
    if target is not None:
        with db.engine.begin() as connection:
            config = alembic_config(db.url, migrations)
            config.attributes["connection"] = connection
            command.upgrade(config, target)
    with db.write() as session:
        if session.scalar(select(BrokerState.id).where(BrokerState.id == 1)) is None:
            session.execute(insert(BrokerState).values(id=1, config_version=1))
    return Outcome(current_revision(db), tuple(held), ahead)


def current_revision(db: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()

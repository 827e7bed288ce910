"""Whether the broker's database can be used: for /readyz and for the answer to a
request that met a database outage (a 503 in words, never a 500)."""

from __future__ import annotations

from deskbroker.store import migrate, outage
from deskbroker.store.db import Database
from deskbroker.store.outage import OUTAGE_TYPES, Outage

DATABASE_DOWN = (
    "The broker cannot reach its database just now. Try again in {wait} seconds (asking "
    "again is safe); if it persists, tell your administrator."
)
DATABASE_BUSY = (
    "The database is busy with other changes and this request waited too long for its "
    "turn, so nothing was changed. Try again in {wait} seconds."
)
DATABASE_CROSSED = (
    "This request and another changed the same things at once, and the database stopped "
    "this one so that the other could finish; nothing of it was changed. Try again in "
    "{wait} seconds."
)
_WORDS = {
    Outage.DOWN: DATABASE_DOWN,
    Outage.BUSY: DATABASE_BUSY,
    Outage.CROSSED: DATABASE_CROSSED,
}


def database_outage(exc: BaseException) -> str | None:
    """The words for a failure that means the database cannot be used right now (down,
    restarting, the connection lost, the pool exhausted, SQLite locked past its busy
    timeout), or None for any other error. Looks through the causes, since a failure
    may be re-raised as another."""
    found = outage.classify(exc)
    return None if found is None else _WORDS[found]


def schema_revision(db: Database) -> str | None:
    """The database's migration revision (None: no schema yet). Raises whatever the
    driver raises when the database does not answer."""
    outage.ping(db)
    return migrate.current_revision(db)


__all__ = [
    "DATABASE_BUSY",
    "DATABASE_CROSSED",
    "DATABASE_DOWN",
    "OUTAGE_TYPES",
    "database_outage",
    "schema_revision",
]

"""Which database failures mean "the database cannot be used just now".

The driver's exceptions are SQLAlchemy's: this module is where they are named, so the
HTTP layer can answer an outage with a 503 in words without importing SQLAlchemy.
"""

from __future__ import annotations

import enum

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from deskbroker.errors import DeskbrokerError
from deskbroker.store.db import Database

# What an outage handler is registered for; ``classify`` decides on each (another
# DBAPIError, an IntegrityError say, is a bug and stays a 500).
OUTAGE_TYPES: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PoolTimeout,
)


class Outage(enum.Enum):
    """Why the database cannot be used now."""

    DOWN = "down"  # unreachable, restarting, the connection lost, the pool exhausted
    BUSY = "busy"  # SQLite locked past its busy timeout by other writers
    # PostgreSQL rolled the unit back to break a deadlock with another (or a
    # serialization failure): nothing of it was written, and the same request again
    # goes through once the other has committed.
    CROSSED = "crossed"


# SQLSTATE class 40, "transaction rollback": 40P01 deadlock, 40001 serialization.
_ROLLED_BACK = "40"


def classify(exc: BaseException) -> Outage | None:
    """The outage a failure means, or None for any other error. Looks through the
    causes, since a failure may be re-raised as another."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None or isinstance(seen, DeskbrokerError):
            return None
        if isinstance(seen, OperationalError) and "database is locked" in str(seen.orig):
            return Outage.BUSY
        if isinstance(seen, OperationalError) and str(
            getattr(seen.orig, "sqlstate", "") or ""
        ).startswith(_ROLLED_BACK):
            return Outage.CROSSED
        if isinstance(seen, OUTAGE_TYPES):
            return Outage.DOWN
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return Outage.DOWN
        seen = seen.__cause__ or seen.__context__
    return None


def ping(db: Database) -> None:
    """One trivial statement: raises if the database does not answer."""
    with db.read() as session:
        session.execute(text("SELECT 1"))

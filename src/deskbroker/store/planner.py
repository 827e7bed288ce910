"""What the database's query planner needs to pick the claim's index: fresh statistics.

A pool imported in bulk leaves PostgreSQL with no idea how many desktops are free; until
autovacuum gets round to it, the planner guesses, and for the claim it guessed a nested
loop comparing every free desktop with every member (quadratic in the pool's size). So
whoever writes many desktop rows at once refreshes the statistics in the same unit.
"""

from __future__ import annotations

from sqlalchemy import text

from deskbroker.store.db import Database, Unit, after_commit

# Rows written at once from which the statistics are refreshed: below it, autovacuum's
# own threshold (50 rows + 10 % of the table) keeps up soon enough.
BULK_ROWS = 500
# The tables the claim reads; ANALYZE samples at most 30,000 rows of each, so even a
# large pool costs tens of milliseconds, once per bulk write.
_CLAIM_TABLES = ("desktops", "pool_members")


def refresh_statistics(session: Unit, *, written: int) -> bool:
    """After ``written`` rows went into the claim's tables: ANALYZE them on PostgreSQL
    once the unit has committed, if that is a bulk write (``BULK_ROWS``); returns whether
    it will.

    Not inside the unit: ANALYZE holds its tables' statistics lock until its transaction
    ends, and a second ANALYZE waits for it, so one tenant's long configuration apply
    would hold every other tenant's bulk writes (and, holding that lock, the unit once
    took part in a deadlock with the configuration version's row). Run after the commit,
    it also samples what the unit wrote as every other node sees it. A unit that writes
    many pools asks for one ANALYZE, not one per refresh (``after_commit``).

    SQLite's planner needs no statistics to walk the claim's partial indexes (their
    columns are the ORDER BY), so nothing is done there."""
    if written < BULK_ROWS or session.get_bind().dialect.name != "postgresql":
        return False
    after_commit(_analyze)
    return True


def _analyze(db: Database) -> None:
    with db.connect_write() as conn:
        for table in _CLAIM_TABLES:
            conn.execute(text(f"ANALYZE {table}"))

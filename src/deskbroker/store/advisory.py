"""Transaction-scoped advisory locks: one unit at a time per name on PostgreSQL, until
it commits or rolls back. SQLite's one writer already orders its units."""

from __future__ import annotations

import hashlib

from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session


def xact_lock(unit: Session | Connection, name: str) -> None:
    """Wait for, then hold until the unit ends, the advisory lock named ``name`` (a
    64-bit hash of it: give each kind of lock a prefix of its own)."""
    bind = unit if isinstance(unit, Connection) else unit.get_bind()
    if bind.dialect.name != "postgresql":
        return
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    unit.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest, "big", signed=True))))

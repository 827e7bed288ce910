"""Failed sign-ins per key, shared by every broker through the database.

A key is an account (``account:<tenant>:<name>``) or a client address
(``address:<ip>``). Counting a failure is one upsert per key; reading the state of a
login's keys is one statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, case, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from deskbroker.store.tables import LoginThrottle


@dataclass(frozen=True)
class KeyState:
    key: str
    failures: int
    window_started_at: datetime
    locked_until: datetime | None
    lockouts: int


# Built once (every sign-in reads it): the keys are one expanding parameter.
_READ = select(
    LoginThrottle.key,
    LoginThrottle.failures,
    LoginThrottle.window_started_at,
    LoginThrottle.locked_until,
    LoginThrottle.lockouts,
).where(LoginThrottle.key.in_(bindparam("keys", expanding=True)))


def read(session: Session, keys: Sequence[str]) -> dict[str, KeyState]:
    rows = session.execute(_READ, {"keys": list(keys)}).all()
    return {r[0]: KeyState(*r) for r in rows}


def count_failure(
    session: Session,
    key: str,
    *,
    now: datetime,
    window_s: int,
    limit: int,
    lockout_s: int,
    max_factor: int,
) -> datetime | None:
    """Count one failure against ``key``; returns until when this failure locked the key,
    else ``None``.

    A failure outside the window starts a new window; the ``limit``-th failure in a window
    locks the key for ``lockout_s`` doubled for each earlier lockout (up to ``max_factor``
    times) and starts a new count. One upsert, and one update when it locks: the row lock
    (PostgreSQL) or the single writer (SQLite) makes concurrent failures count once each."""
    dialect = session.get_bind().dialect.name
    ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(LoginThrottle).values(
        key=key, failures=1, window_started_at=now, locked_until=None, lockouts=0
    )
    old = LoginThrottle.__table__.c
    stale = old.window_started_at < now - timedelta(seconds=window_s)
    row = session.execute(
        ins.on_conflict_do_update(
            index_elements=[LoginThrottle.key],
            set_={
                "failures": case((stale, 1), else_=old.failures + 1),
                "window_started_at": case((stale, now), else_=old.window_started_at),
            },
        ).returning(LoginThrottle.failures, LoginThrottle.lockouts)
    ).one()
    failures, lockouts = int(row[0]), int(row[1])
    if failures < limit:
        return None
    until = now + timedelta(seconds=lockout_s * min(2**lockouts, max_factor))
    session.execute(
        update(LoginThrottle)
        .where(LoginThrottle.key == key, LoginThrottle.failures >= limit)
        .values(failures=0, window_started_at=now, locked_until=until, lockouts=lockouts + 1)
    )
    return until


def forget(session: Session, keys: Sequence[str]) -> int:
    """Clear keys (a successful sign-in, or an administrator's unlock)."""
    result = session.execute(delete(LoginThrottle).where(LoginThrottle.key.in_(list(keys))))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]

"""Transaction-scoped advisory locks: one unit at a time per name on PostgreSQL, until
it commits or rolls back. SQLite's one writer already orders its units."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from deskbroker.errors import TooManyRequests, Unavailable

# PostgreSQL's SQLSTATE for a lock not granted within ``lock_timeout``.
_LOCK_NOT_AVAILABLE = "55P03"


def _key(name: str) -> int:
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _on_postgres(unit: Session | Connection) -> bool:
    bind = unit if isinstance(unit, Connection) else unit.get_bind()
    return bind.dialect.name == "postgresql"


def xact_lock(unit: Session | Connection, name: str) -> None:
    """Wait for, then hold until the unit ends, the advisory lock named ``name`` (a
    64-bit hash of it: give each kind of lock a prefix of its own)."""
    if _on_postgres(unit):
        unit.execute(select(func.pg_advisory_xact_lock(_key(name))))


class BoundedWaits:
    """Waits for advisory locks that a request's thread may make: at most ``per_group``
    at once per group (a tenant) in this process, each at most ``wait_s``.

    A request waiting for a lock holds one of the process's threads and one of its
    pooled database connections meanwhile. Unbounded, one tenant's administrator
    holding a lock for long (a configuration apply of thousands of pools takes tens of
    seconds) and sending the same tenant's writes meanwhile took every thread and
    connection of the process, and every other tenant's requests waited for them. Past
    the bound a request is refused at once (429, to try again in a second: the waits of
    a script's burst of small writes are short, and the bound is there for long ones);
    one that waited ``wait_s`` in vain is answered 503; both say when to try again, and
    nothing of theirs is written."""

    def __init__(self, per_group: int, wait_s: float, what: str) -> None:
        self.per_group = per_group
        self.wait_s = wait_s
        self.what = what
        self._waiting: Counter[str] = Counter()
        self._lock = threading.Lock()

    def waiting(self, group: str) -> int:
        """How many units of ``group`` wait in this process now."""
        with self._lock:
            return self._waiting[group]

    def xact_lock(self, unit: Session | Connection, name: str, group: str) -> None:
        """``xact_lock``, bounded: taken at once when free (one statement, as unbounded),
        else waited for within the bounds."""
        if not _on_postgres(unit):
            return
        if unit.execute(select(func.pg_try_advisory_xact_lock(_key(name)))).scalar_one():
            return
        with self._one_more(group):
            previous = unit.execute(select(func.current_setting("lock_timeout"))).scalar_one()
            timeout = f"{round(self.wait_s * 1000)}ms"
            unit.execute(select(func.set_config("lock_timeout", timeout, True)))
            try:
                unit.execute(select(func.pg_advisory_xact_lock(_key(name))))
            except OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                    raise
                raise Unavailable(
                    f"{self.what} has been under way for more than {self.wait_s:g} s; "
                    "this request waited for it and gave up, nothing of it written: "
                    f"send it again in {round(self.wait_s)} s (Retry-After)",
                    retry_after=round(self.wait_s),
                ) from exc
            unit.execute(select(func.set_config("lock_timeout", previous, True)))

    @contextmanager
    def _one_more(self, group: str) -> Iterator[None]:
        with self._lock:
            if self._waiting[group] >= self.per_group:
                raise TooManyRequests(
                    f"{self.what} is under way and {self.per_group} more requests of "
                    "this tenant already wait for it on this broker; this one is "
                    "refused, nothing of it written: send it again in a second "
                    "(Retry-After), or fewer changes at once",
                    retry_after=1,
                )
            self._waiting[group] += 1
        try:
            yield
        finally:
            with self._lock:
                self._waiting[group] -= 1
                if not self._waiting[group]:
                    del self._waiting[group]

"""The rule that no network call runs while this thread holds a database write unit.

A write unit holds a lock (on SQLite the one process-wide writer lock, on PostgreSQL row
locks and a pooled connection). A cloud, directory or identity-provider call that hangs
inside one freezes every login behind it, so such calls are made between units: read
what is needed, call with no transaction open, then write the result in a short unit
that re-checks the row.

``store.db.Database`` marks its write units here; the center and identity seams call
``ensure_no_write_unit`` before every call that may leave the host, so breaking the rule
fails at once (in the tests, on every path they cover) instead of under load.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

_state = threading.local()

F = TypeVar("F", bound=Callable[..., Any])


class HeldTransaction(RuntimeError):
    """A network call was about to run inside a database write unit: a programming
    error, never the user's; it is raised before the call leaves the host."""


def write_depth() -> int:
    """How many write units this thread has open (nested units count each)."""
    return int(getattr(_state, "depth", 0))


@contextmanager
def write_unit() -> Iterator[None]:
    """Mark a database write unit open on this thread for the duration of the block."""
    _state.depth = write_depth() + 1
    try:
        yield
    finally:
        _state.depth = write_depth() - 1


def ensure_no_write_unit(what: str) -> None:
    """Refuse ``what`` (a network call) while this thread holds a write unit."""
    if write_depth() > 0:
        raise HeldTransaction(
            f"{what} called inside a database write unit: a slow answer would hold the "
            "database for everyone; read first, call with no transaction open, then write"
        )


def guard_methods(cls: type, names: Iterable[str]) -> None:
    """Wrap the methods ``names`` that ``cls`` itself defines so every subclass of a seam
    is checked. A method an instance lists in its ``offline`` attribute (it does no I/O,
    as a static center's listing of its own params) is let through."""
    for name in names:
        method = cls.__dict__.get(name)
        if method is None or getattr(method, "_write_guarded", False):
            continue
        setattr(cls, name, _guarded(name, method))


def _guarded(name: str, method: F) -> F:
    @functools.wraps(method)
    def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
        if name not in getattr(self, "offline", ()):
            ensure_no_write_unit(f"{type(self).__name__}.{name}")
        return method(self, *args, **kwargs)

    checked.__dict__["_write_guarded"] = True
    return checked  # type: ignore[return-value]

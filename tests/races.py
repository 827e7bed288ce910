"""Two units of work at once, one held between two of its statements while the other
runs: how the suite shows a read-then-write race on PostgreSQL, where each statement of
a unit sees what had committed when it began (SQLite's one writer serialises the two).

The store function at the seam is patched to call ``Seam.stop`` there (``Seam.after``
stops just after it returns); ``while_held`` runs the held unit until it stops, then
the other, then lets the held one go on."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text


class Seam:
    """Where the held unit stops. ``first_only``: stop at the first call, whatever its
    thread (a route the app runs on a thread of its own); else only on the held
    unit's thread."""

    def __init__(self, *, first_only: bool = False) -> None:
        self.reached = threading.Event()
        self.go_on = threading.Event()
        self.first_only = first_only
        self.thread: threading.Thread | None = None
        self._calls = 0
        self._lock = threading.Lock()

    def after(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
        """Stop here just after ``owner.name`` returns (patched for the test's length)."""
        real = getattr(owner, name)

        def stopping(*args: Any, **kwargs: Any) -> Any:
            found = real(*args, **kwargs)
            self.stop()
            return found

        monkeypatch.setattr(owner, name, stopping)

    def stop(self) -> None:
        with self._lock:
            self._calls += 1
            first = self._calls == 1
        held = first if self.first_only else threading.current_thread() is self.thread
        if held:
            self.reached.set()
            assert self.go_on.wait(30), "never told to go on"


def while_held(
    seam: Seam,
    held: Callable[[], Any],
    other: Callable[[], Any],
    *,
    other_ends_first: bool,
    other_waits_s: float = 0.0,
) -> None:
    """Run ``held`` on a thread until it stops at ``seam``, then ``other`` on another.
    ``other_ends_first`` (PostgreSQL, where nothing makes it wait): ``other`` must have
    ended before ``held`` goes on; else (SQLite's one writer, or a lock the held unit
    holds) it waits meanwhile. ``other_waits_s``: ``other`` must still be waiting that
    long after it started (a lock of the held unit's keeps it out). Both have ended
    when this returns."""
    first = threading.Thread(target=held)
    seam.thread = first
    first.start()
    assert seam.reached.wait(30), "the held unit never reached its seam"
    second = threading.Thread(target=other)
    second.start()
    if other_ends_first:
        second.join(30)
        assert not second.is_alive(), "the other unit waited for the held one"
    elif other_waits_s:
        second.join(other_waits_s)
        assert second.is_alive(), "the other unit did not wait for the held one"
    seam.go_on.set()
    first.join(30)
    second.join(30)
    assert not first.is_alive() and not second.is_alive()


def raised_while_desktop_held(
    ctx: Any, desktop_id: str, call: Callable[[], Any], waited: str
) -> list[BaseException]:
    """Run ``call`` while another unit holds the desktop's row (``FOR UPDATE``, on
    PostgreSQL; SQLite has no row locks): it must end within 5 s, not wait for the row
    (``waited`` says what did, if it does). Returns what it raised (empty: nothing)."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    with ctx.db.engine.connect() as holder:
        if ctx.db.is_postgres:
            holder.execute(
                text("SELECT 1 FROM desktops WHERE id = :d FOR UPDATE"), {"d": desktop_id}
            )
        thread = threading.Thread(target=run)
        thread.start()
        thread.join(5)
        still_waiting = thread.is_alive()
        holder.rollback()
    thread.join(30)
    assert not still_waiting, waited
    return raised

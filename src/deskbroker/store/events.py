"""The append-only event log.

A unit's events are written as it commits, not as they are appended: an event's id comes
from a sequence when its row is inserted, and the webhooks' fan-out and the event stream
walk the log in id order, passing a gap in the ids once the event after it has settled
(``store/fanout.py``: a unit rolled back leaves gaps forever). Inserted early in a unit
that ran longer than that (a configuration apply of thousands of pools), the unit's
events committed behind a cursor that had already walked past them, and no webhook or
stream ever carried them. Inserted at the commit, an event's id is taken milliseconds
before the row becomes visible, whatever the unit's length."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.event import listens_for
from sqlalchemy.orm import Session, SessionTransaction

from deskbroker.store.tables import Desktop, Event

# On the table, not the mapped class: a plain Core insert skips the ORM's bulk-insert
# path (and the autoflush it brings), and one statement built once keeps its cache key.
# The columns' Python-side defaults (``at``, ``detail``) still apply: an event's time is
# its unit's commit.
_APPEND = insert(cast(Table, Event.__table__))

# session.info key: the open unit's events, each with the (sub)transaction it came in.
_PENDING = "deskbroker.events_pending"


def append(
    session: Session,
    kind: str,
    *,
    tenant_id: str | None,
    actor: str = "",
    user_id: str | None = None,
    desktop_id: str | None = None,
    pool_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """One row per event, written as the unit commits (none if it rolls back, nor those
    of a savepoint rolled back)."""
    within = session.get_nested_transaction() or session.get_transaction()
    row = {
        "tenant_id": tenant_id,
        "kind": kind,
        "actor": actor,
        "user_id": user_id,
        "desktop_id": desktop_id,
        "pool_id": pool_id,
        "detail": detail or {},
    }
    session.info.setdefault(_PENDING, []).append((within, row))


@listens_for(Session, "before_commit")
def _write(session: Session) -> None:
    # A savepoint's release is a commit too: the unit's own commit writes its events.
    if session.in_nested_transaction():
        return
    pending: list[tuple[Any, dict[str, Any]]] | None = session.info.pop(_PENDING, None)
    if pending:
        session.execute(_APPEND, [row for _, row in pending])


@listens_for(Session, "after_soft_rollback")
def _drop(session: Session, previous: SessionTransaction) -> None:
    pending: list[tuple[Any, dict[str, Any]]] | None = session.info.get(_PENDING)
    if not pending:
        return
    if previous.parent is None:
        session.info.pop(_PENDING, None)
        return
    session.info[_PENDING] = [(t, row) for t, row in pending if not _within(t, previous)]


def _within(transaction: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False


@listens_for(Session, "after_transaction_end")
def _forget(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


def append_for_desktop(
    session: Session,
    kind: str,
    *,
    tenant_id: str,
    desktop_id: str,
    actor: str,
    user_id: str | None,
    detail: dict[str, Any],
) -> bool:
    """An event about a desktop of ``tenant_id`` (its pool looked up); False, and nothing
    written, when the tenant has no such desktop."""
    found = session.execute(
        select(Desktop.assigned_pool_id).where(
            Desktop.id == desktop_id, Desktop.tenant_id == tenant_id
        )
    ).first()
    if found is None:
        return False
    append(
        session,
        kind,
        tenant_id=tenant_id,
        actor=actor,
        user_id=user_id,
        desktop_id=desktop_id,
        pool_id=found[0],
        detail=detail,
    )
    return True

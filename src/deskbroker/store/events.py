"""The append-only event log."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from deskbroker.store.tables import Desktop, Event

# On the table, not the mapped class: a plain Core insert skips the ORM's bulk-insert
# path (and the autoflush it brings), and one statement built once keeps its cache key.
# The columns' Python-side defaults (``at``, ``detail``) still apply.
_APPEND = insert(cast(Table, Event.__table__))


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
    """One row per event, one statement per row."""
    session.execute(
        _APPEND,
        {
            "tenant_id": tenant_id,
            "kind": kind,
            "actor": actor,
            "user_id": user_id,
            "desktop_id": desktop_id,
            "pool_id": pool_id,
            "detail": detail or {},
        },
    )


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

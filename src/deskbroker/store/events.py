"""The append-only event log."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from deskbroker.store.tables import Event


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
        insert(Event).values(
            tenant_id=tenant_id,
            kind=kind,
            actor=actor,
            user_id=user_id,
            desktop_id=desktop_id,
            pool_id=pool_id,
            detail=detail or {},
        )
    )

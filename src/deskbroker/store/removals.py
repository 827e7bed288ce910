"""The reads and writes of desktops removed from disk and of forgotten machines."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from deskbroker.domain.states import PowerState
from deskbroker.store.tables import Center, Desktop, ForgottenDesktop


def center(session: Session, center_id: str) -> Center | None:
    return session.get(Center, center_id)


def requested(session: Session, center_id: str) -> list[tuple[str, str, str, str, dict[str, Any]]]:
    """The center's desktops an administrator deleted: (id, tenant, name, external id,
    driver state). Never an assigned one: whatever marked it, a user's desktop is not
    terminated under them."""
    rows = session.execute(
        select(
            Desktop.id, Desktop.tenant_id, Desktop.name, Desktop.external_id, Desktop.driver_state
        )
        .where(
            Desktop.center_id == center_id,
            Desktop.delete_requested_at.is_not(None),
            Desktop.assigned_user_id.is_(None),
        )
        # A pass stops at the first call its center does not answer: in random order,
        # one machine that never answers does not stand in front of the others for good.
        .order_by(func.random())
    ).all()
    return [(i, t, n, e, dict(s or {})) for i, t, n, e, s in rows]


def forget_removed(session: Session, desktop_id: str) -> bool:
    """Drop the row of a desktop whose instance the center no longer has; False when it
    is no longer one to drop (restored, or assigned meanwhile)."""
    done = session.execute(
        delete(Desktop).where(
            Desktop.id == desktop_id,
            Desktop.delete_requested_at.is_not(None),
            Desktop.power_state == PowerState.DELETING.value,
            Desktop.assigned_user_id.is_(None),
        )
    )
    return bool(getattr(done, "rowcount", 0))


def forgotten_ids(session: Session, center_id: str) -> set[str]:
    """The external ids of a center's machines that scans leave out."""
    return set(
        session.scalars(
            select(ForgottenDesktop.external_id).where(ForgottenDesktop.center_id == center_id)
        )
    )


def delete_requested_ids(session: Session, center_id: str) -> set[str]:
    """The desktops of a center being deleted at an administrator's word (their power
    state stays ``deleting`` whatever a scan sees, until the removal job confirms)."""
    return set(
        session.scalars(
            select(Desktop.id).where(
                Desktop.center_id == center_id, Desktop.delete_requested_at.is_not(None)
            )
        )
    )


def lock_requested(session: Session, center_id: str) -> list[tuple[str, str, str]]:
    """The center's desktops being removed, locked for the caller's unit: (id, name,
    external id), in id order."""
    rows = session.execute(
        select(Desktop.id, Desktop.name, Desktop.external_id)
        .where(Desktop.center_id == center_id, Desktop.delete_requested_at.is_not(None))
        # The order the removal job's write takes them in too: two units that lock the
        # same rows in one order cannot deadlock on PostgreSQL.
        .order_by(Desktop.id)
        .with_for_update()
    ).all()
    return [(str(i), str(n), str(e)) for i, n, e in rows]

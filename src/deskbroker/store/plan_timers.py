"""The plan actions waiting on a user's desktops (the portal's "in 20 minutes: suspend")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from deskbroker.store.db import Unit as Session
from deskbroker.store.tables import Desktop, Timer


@dataclass(frozen=True)
class HeldDesktopPlan:
    """A desktop the user holds and, when one waits, its earliest plan action."""

    desktop_id: str
    desktop_name: str
    plan: str | None
    trigger: str | None
    action: str | None
    due_at: datetime | None


def next_actions(session: Session, user_id: str) -> list[HeldDesktopPlan]:
    """Each desktop ``user_id`` holds with its earliest waiting timer (one statement)."""
    rows = session.execute(
        select(Desktop.id, Desktop.name, Timer.plan, Timer.trigger, Timer.action, Timer.due_at)
        .outerjoin(Timer, Timer.desktop_id == Desktop.id)
        .where(Desktop.assigned_user_id == user_id)
        .order_by(Desktop.name, Desktop.id, Timer.due_at)
    ).all()
    found: dict[str, HeldDesktopPlan] = {}
    for desktop_id, name, plan, trigger, action, due_at in rows:
        # Ordered by due time within a desktop: its first row is its earliest timer.
        found.setdefault(
            desktop_id, HeldDesktopPlan(desktop_id, name, plan, trigger, action, due_at)
        )
    return list(found.values())

"""What a user's plans will do to their desktops next, and when."""

from __future__ import annotations

from dataclasses import replace

from deskbroker.domain.timestamps import aware
from deskbroker.services.context import BrokerContext
from deskbroker.store import plan_timers
from deskbroker.store.plan_timers import HeldDesktopPlan


def next_actions(ctx: BrokerContext, user_id: str) -> list[HeldDesktopPlan]:
    """Every desktop the user holds, with its earliest waiting plan action (if any)."""
    with ctx.db.read() as session:
        found = plan_timers.next_actions(session, user_id)
    return [replace(f, due_at=aware(f.due_at)) if f.due_at else f for f in found]

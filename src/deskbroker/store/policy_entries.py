"""A policy's entries: the pools it offers, in order, with their plans."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from deskbroker.store.tables import PolicyEntry

# What an entry says, as the admin API reads it back.
ENTRY_FIELDS = (
    "pool_id",
    "desktops",
    "assignment",
    "ordering",
    "backup_pool_id",
    "protocol_plan_id",
    "power_plan_id",
    "release_plan_id",
    "skip_lost_agents",
    "rogue_users",
    "user_power_actions",
)


def replace(session: Session, policy_id: str, entries: list[dict[str, Any]]) -> None:
    """The policy's entries become ``entries``, in their order."""
    session.execute(delete(PolicyEntry).where(PolicyEntry.policy_id == policy_id))
    for position, entry in enumerate(entries):
        session.add(
            PolicyEntry(
                policy_id=policy_id,
                position=position,
                **{k: (v.value if hasattr(v, "value") else v) for k, v in entry.items()},
            )
        )
    session.flush()


def read(session: Session, policy_id: str) -> list[dict[str, Any]]:
    """The policy's entries in order, each as its fields."""
    rows = session.scalars(
        select(PolicyEntry).where(PolicyEntry.policy_id == policy_id).order_by(PolicyEntry.position)
    ).all()
    return [{k: getattr(r, k) for k in ENTRY_FIELDS} for r in rows]

"""Per-tenant quotas: how much room is left, and the words that say so. Pure arithmetic."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TenantQuota:
    """A tenant's limits; ``None`` is unlimited."""

    desktops: int | None = None
    sessions: int | None = None


def room(limit: int | None, used: int) -> int | None:
    """How many more fit under ``limit`` (never negative); ``None`` when unlimited."""
    return None if limit is None else max(0, limit - used)


def words(used: int, limit: int | None, what: str) -> str:
    """``tenant quota: 20 of 20 desktops`` (or ``... desktops, unlimited``)."""
    if limit is None:
        return f"tenant quota: {used} {what}, unlimited"
    return f"tenant quota: {used} of {limit} {what}"

"""How many desktops a pool should create or retire now. Pure arithmetic."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any

from deskbroker.domain.rules import TimeWindow, zone


@dataclass(frozen=True)
class Targets:
    """Keep ``min_unassigned`` free desktops, never more than ``max_total`` in all."""

    min_unassigned: int
    max_total: int
    window: str | None = None


def _clock(text: str) -> time:
    hours, _, minutes = text.partition(":")
    return time(int(hours), int(minutes or 0))


def _zone_name(provisioning: Mapping[str, Any]) -> str:
    name = str(provisioning.get("timezone") or "UTC")
    try:
        zone(name)
    except ValueError:
        return "UTC"  # the admin API refuses unknown zones; a stored one may predate that
    return name


def targets(provisioning: Mapping[str, Any], moment: datetime) -> Targets:
    """The pool's limits at ``moment``: the first schedule window that contains it wins.

    Windows are read on the clock of the pool's ``timezone``; an aware ``moment`` (the
    engine passes UTC) is converted into it, a naive one is taken as that zone's time."""
    schedules: Sequence[Mapping[str, Any]] = provisioning.get("schedules") or []
    where = _zone_name(provisioning)
    for index, window in enumerate(schedules):
        span = TimeWindow(
            frozenset(window["days"]), _clock(window["start"]), _clock(window["end"]), where
        )
        if span.contains(moment):
            return Targets(
                int(window["min_unassigned"]),
                int(window["max_total"]),
                f"schedule {index + 1} ({window['start']}-{window['end']})",
            )
    return Targets(
        int(provisioning.get("min_unassigned", 0)), int(provisioning.get("max_total", 0))
    )


@dataclass(frozen=True)
class PoolCounts:
    total: int  # desktops in the pool, including ones being built
    unassigned: int  # usable and free, including ones being built
    waiting_users: int
    in_flight: int


def to_create(limits: Targets, counts: PoolCounts) -> int:
    """Desktops to start building now: free desktops short of N plus waiting users,
    never taking the total past M."""
    want_free = limits.min_unassigned + counts.waiting_users
    short = want_free - counts.unassigned
    room = limits.max_total - counts.total
    return max(0, min(short, room))


def unwanted(limits: Targets, counts: PoolCounts) -> int:
    """Desktops (built or coming) beyond what the pool wants: above M in all, or more free
    than N plus waiting users. Unstarted builds up to this many are cancelled; never
    positive in a pass that creates."""
    above_max = counts.total - limits.max_total
    above_free = counts.unassigned - (limits.min_unassigned + counts.waiting_users)
    return max(0, above_max, above_free)


def to_retire(limits: Targets, counts: PoolCounts) -> int:
    """Free desktops to remove when the pool is above M (e.g. scale to zero at night)."""
    surplus = counts.total - limits.max_total
    return max(0, min(surplus, counts.unassigned))

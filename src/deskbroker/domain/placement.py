"""Which center of a pool builds each new desktop: placement and overflow, pure rules.

A pool may build in several centers (an OpenStack project and an AWS region, say). The
engine knows per center how many of the pool's desktops it holds, how many desktops of
any pool, and whether it said it is full (a build refused for quota or capacity, until a
back-off passes). ``place`` shares new builds out; a full center gets none, so builds
overflow to the next, and come back once its back-off has passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Placement(StrEnum):
    FILL_IN_ORDER = "fill_in_order"
    SPREAD = "spread"
    MOST_FREE = "most_free"


@dataclass(frozen=True)
class CenterLoad:
    """One candidate center as the engine sees it now."""

    center_id: str
    pool_desktops: int  # the pool's desktops there, being built included
    all_desktops: int  # desktops of any pool (and found ones) there
    full: bool = False


def place(count: int, placement: Placement, loads: list[CenterLoad]) -> list[str]:
    """The center of each of ``count`` new builds, in ``loads``' order of preference;
    fewer (none) when every center is full."""
    open_ = [load for load in loads if not load.full]
    if count <= 0 or not open_:
        return []
    if placement is Placement.FILL_IN_ORDER:
        # The first center with room takes them all; a quota refusal moves the rest on.
        return [open_[0].center_id] * count
    pool = {load.center_id: load.pool_desktops for load in open_}
    every = {load.center_id: load.all_desktops for load in open_}
    order = {load.center_id: index for index, load in enumerate(open_)}
    chosen: list[str] = []
    for _ in range(count):
        if placement is Placement.SPREAD:
            center = min(pool, key=lambda c: (pool[c], order[c]))
        else:
            center = min(every, key=lambda c: (every[c], order[c]))
        chosen.append(center)
        pool[center] += 1
        every[center] += 1
    return chosen


def overflow(current: str, placement: Placement, loads: list[CenterLoad]) -> str | None:
    """Where a build refused by ``current`` (full) goes instead, or ``None`` when no
    other center has room (the build then waits where it is)."""
    others = [load for load in loads if load.center_id != current]
    chosen = place(1, placement, others)
    return chosen[0] if chosen else None

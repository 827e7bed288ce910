"""Offer ordering and queue estimates."""

from __future__ import annotations

import math
from enum import StrEnum


class OfferOrdering(StrEnum):
    """Which free desktop a pool hands out first."""

    RUNNING_FIRST = "running_first"
    LEAST_RECENTLY_USED = "least_recently_used"
    MOST_RECENTLY_USED = "most_recently_used"
    NAME = "name"


class AssignmentKind(StrEnum):
    PERSISTENT = "persistent"
    POOLED = "pooled"


DEFAULT_WAIT_PER_POSITION_S = 300.0


def queue_estimate_s(position: int, release_interval_s: float | None) -> int:
    """Seconds until ``position`` is likely served, from the pool's observed interval
    between releases (or a conservative default before any release was seen)."""
    interval = (
        release_interval_s
        if release_interval_s and release_interval_s > 0
        else (DEFAULT_WAIT_PER_POSITION_S)
    )
    return max(1, math.ceil(position * interval))


def next_release_interval(previous: float | None, observed_s: float, weight: float = 0.2) -> float:
    """Exponentially weighted mean of the time between releases in a pool."""
    if previous is None or previous <= 0:
        return observed_s
    return (1 - weight) * previous + weight * observed_s

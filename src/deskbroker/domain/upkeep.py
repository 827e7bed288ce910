"""A pool's desktop upkeep: a daily refresh (rebuilt to the pool's image) or reboot of
its free desktops in a time window, and a refresh of each desktop its user released
(the equivalent of reverting to a snapshot on release). Desktops in use are skipped."""

from __future__ import annotations

import zoneinfo
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deskbroker.domain.provisioning import Clock


class ScheduledAction(StrEnum):
    NONE = "none"
    REFRESH = "refresh"  # rebuilt from the pool's image
    REBOOT = "reboot"


# Why a desktop is out of the claim for a rebuild or reboot (desktop_rebuilds.reason).
class RebuildReason(StrEnum):
    ROLLOUT = "rollout"
    RELEASE = "release"
    REFRESH = "refresh"
    REBOOT = "reboot"


class Upkeep(BaseModel):
    """What an administrator sets on a pool (``PUT /admin/pools/{id}/upkeep``)."""

    model_config = ConfigDict(extra="forbid")

    refresh_on_release: bool = Field(
        default=False,
        description="rebuild a released desktop from the pool's image before anyone "
        "else gets it (where the center can rebuild)",
    )
    scheduled_action: ScheduledAction = ScheduledAction.NONE
    scheduled_at: Clock = Field(default="02:00", description="when the window opens, HH:MM")
    window_minutes: int = Field(default=60, ge=1, le=1440)
    timezone: str = Field(default="UTC", max_length=64)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}; use e.g. Europe/Paris") from exc
        return value


def window_day(
    now: datetime, *, at: str, window_minutes: int, timezone: str, last_served: str
) -> str | None:
    """The local date whose window ``now`` falls in, when that window was not served
    yet (``last_served`` is the date of the last one served); None otherwise. A window
    that opens late in the evening and closes after midnight belongs to the day it
    opened."""
    try:
        zone = zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        zone = zoneinfo.ZoneInfo("UTC")
    local = now.astimezone(zone)
    hour, minute = (int(part) for part in at.split(":"))
    for days_back in (0, 1):
        day = (local - timedelta(days=days_back)).date()
        opens = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
        if opens <= local < opens + timedelta(minutes=window_minutes):
            served = day.isoformat()
            return None if served == last_served else served
    return None

"""A pool's provisioning: the stored model, and how many desktops to create or retire now.

``Provisioning`` is what an administrator writes on a pool and the engine reads back
(``Provisioning.from_stored``); the rest is pure arithmetic over it."""

from __future__ import annotations

import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time
from typing import Annotated, Any

from pydantic import (
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from deskbroker.domain import tags
from deskbroker.domain.placement import Placement
from deskbroker.domain.rules import TimeWindow
from deskbroker.domain.stored import StoredModel, reading

Clock = Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]


class Window(StoredModel):
    """A schedule window of a pool: on these days, between these times (the pool's time
    zone), keep these targets instead of the pool's own."""

    days: list[Annotated[int, Field(ge=0, le=6)]] = Field(min_length=1, max_length=7)
    start: Clock
    end: Clock
    min_unassigned: int = Field(ge=0, le=100000)
    max_total: int = Field(ge=0, le=100000)


class ProvisioningParameters(StoredModel):
    """The broker's own provisioning parameters. Any other key (an image, a flavor...)
    is the provisioning center's, checked against its driver's ``ProvisionParams``."""

    model_config = ConfigDict(extra="allow")

    name_template: Annotated[str, StringConstraints(min_length=1, max_length=63)] = (
        tags.DEFAULT_TEMPLATE
    )
    sequence_start: int = Field(default=1, ge=0, le=1_000_000_000)
    user_data: Annotated[str, StringConstraints(max_length=65535)] = ""
    metadata: dict[str, Annotated[str, StringConstraints(max_length=255)]] = Field(
        default_factory=dict
    )
    deletable: bool = True
    start_unavailable: bool = False
    data_volume_gb: int | None = Field(
        default=None,
        ge=1,
        le=16384,
        description="a data volume per user of this size, attached to whichever desktop "
        "of the pool they hold",
    )

    @model_validator(mode="after")
    def _template(self) -> ProvisioningParameters:
        tags.validate_template(self.name_template)
        return self


class Provisioning(StoredModel):
    """A pool's provisioning: whether the engine builds desktops for it, where, how many
    (``min_unassigned`` free, at most ``max_total``; a schedule window may say otherwise)
    and with which parameters."""

    enabled: bool = False
    center_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        default=None, description="where to build desktops; default the pool's first center"
    )
    centers: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = Field(
        default_factory=list,
        max_length=20,
        description="the centers to build in, in order (each one of the pool's): new "
        "desktops are placed by `placement` and overflow to the next center when one is "
        "full; empty: `center_id`, else the pool's first center",
    )
    placement: Placement = Field(
        default=Placement.FILL_IN_ORDER,
        description="how new desktops are shared out over `centers`: fill_in_order, "
        "spread (fewest of the pool's desktops), most_free (fewest desktops of any pool)",
    )
    center_parameters: dict[
        Annotated[str, StringConstraints(min_length=1, max_length=64)], dict[str, Any]
    ] = Field(
        default_factory=dict,
        max_length=20,
        description="per center of `centers`: that center's own provisioning parameters "
        "(an OpenStack flavor, an AWS instance type), over the shared `parameters`",
    )
    timezone: Annotated[str, StringConstraints(max_length=64)] = Field(
        default="UTC", description="IANA time zone of the schedule windows"
    )
    min_unassigned: int = Field(default=0, ge=0, le=100000)
    max_total: int = Field(default=0, ge=0, le=100000)
    schedules: list[Window] = Field(default_factory=list, max_length=50)
    parameters: ProvisioningParameters = Field(default_factory=ProvisioningParameters)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str, info: ValidationInfo) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            if reading(info):
                return "UTC"  # the admin API refuses unknown zones; a stored one may predate that
            raise ValueError(f"unknown time zone {value!r}; use e.g. Europe/Paris") from exc
        return value

    @model_validator(mode="after")
    def _spread(self) -> Provisioning:
        if len(set(self.centers)) != len(self.centers):
            raise ValueError("centers: a center is named twice")
        strangers = sorted(set(self.center_parameters) - set(self.centers))
        if strangers:
            raise ValueError(
                f"center_parameters: {strangers[0]} is not one of the provisioning centers"
            )
        if self.centers and self.center_id and self.center_id not in self.centers:
            raise ValueError("center_id must be one of centers, or left out")
        return self

    @model_validator(mode="after")
    def _limits(self) -> Provisioning:
        if self.min_unassigned > self.max_total and self.enabled:
            raise ValueError("min_unassigned cannot be larger than max_total")
        for window in self.schedules:
            if window.min_unassigned > window.max_total:
                raise ValueError("a schedule's min_unassigned cannot be larger than its max_total")
        return self

    def center_for(self, pool_center_ids: Sequence[str] | None) -> str | None:
        """The center the engine builds in: the first of ``centers``, else the one
        named, else the pool's first."""
        if self.centers:
            return self.centers[0]
        return self.center_id or next(iter(pool_center_ids or []), None)

    def build_centers(self, pool_center_ids: Sequence[str] | None) -> list[str]:
        """Every center the engine may build in, in the administrator's order."""
        if self.centers:
            return list(self.centers)
        first = self.center_for(pool_center_ids)
        return [first] if first else []

    def request_for(self, center_id: str) -> dict[str, Any]:
        """The parameters a build in ``center_id`` gets: the shared ones as set, with
        that center's own over them."""
        shared = self.parameters.model_dump(mode="json", exclude_unset=True)
        return {**shared, **self.center_parameters.get(center_id, {})}


@dataclass(frozen=True)
class Targets:
    """Keep ``min_unassigned`` free desktops, never more than ``max_total`` in all."""

    min_unassigned: int
    max_total: int
    window: str | None = None


def _clock(text: str) -> time:
    hours, _, minutes = text.partition(":")
    return time(int(hours), int(minutes or 0))


def targets(provisioning: Provisioning, moment: datetime) -> Targets:
    """The pool's limits at ``moment``: the first schedule window that contains it wins.

    Windows are read on the clock of the pool's ``timezone``; an aware ``moment`` (the
    engine passes UTC) is converted into it, a naive one is taken as that zone's time."""
    for index, window in enumerate(provisioning.schedules):
        span = TimeWindow(
            frozenset(window.days), _clock(window.start), _clock(window.end), provisioning.timezone
        )
        if span.contains(moment):
            return Targets(
                window.min_unassigned,
                window.max_total,
                f"schedule {index + 1} ({window.start}-{window.end})",
            )
    return Targets(provisioning.min_unassigned, provisioning.max_total)


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

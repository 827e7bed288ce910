"""Assignment rules: who (group, attribute, OU, client network, time) gets which policy."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, time

from deskbroker.domain.membership import AttributeFilter


@dataclass(frozen=True)
class Identity:
    """A user as an identity source describes them."""

    username: str
    groups: frozenset[str] = frozenset()
    attributes: dict[str, str] = field(default_factory=dict)
    ou: str = ""
    display_name: str = ""
    email: str = ""


@dataclass(frozen=True)
class TimeWindow:
    """Days 0=Monday..6=Sunday, start inclusive, end exclusive; may wrap midnight."""

    days: frozenset[int]
    start: time
    end: time

    def contains(self, moment: datetime) -> bool:
        clock = moment.time()
        if self.start <= self.end:
            return moment.weekday() in self.days and self.start <= clock < self.end
        # Overnight windows belong to the day they start on.
        if clock >= self.start:
            return moment.weekday() in self.days
        return (moment.weekday() - 1) % 7 in self.days and clock < self.end


@dataclass(frozen=True)
class AssignmentRule:
    """All given conditions must hold; an empty rule is the catch-all default."""

    rule_id: str
    policy_id: str | None
    role: str = "user"
    group: str | None = None
    attributes: tuple[AttributeFilter, ...] = ()
    ou: str | None = None
    client_cidr: str | None = None
    window: TimeWindow | None = None

    def matches(self, who: Identity, client: str | None, moment: datetime) -> bool:
        if self.group is not None and self.group.lower() not in {g.lower() for g in who.groups}:
            return False
        if self.attributes and not all(f.matches(who.attributes) for f in self.attributes):
            return False
        if self.ou is not None and not who.ou.lower().endswith(self.ou.lower()):
            return False
        if self.client_cidr is not None:
            if client is None:
                return False
            try:
                if ipaddress.ip_address(client) not in ipaddress.ip_network(self.client_cidr):
                    return False
            except ValueError:
                return False
        return self.window is None or self.window.contains(moment)


def decide(
    rules: Sequence[AssignmentRule], who: Identity, client: str | None, moment: datetime
) -> AssignmentRule | None:
    """The first rule, in order, that matches; ``None`` when none does."""
    for rule in rules:
        if rule.matches(who, client, moment):
            return rule
    return None

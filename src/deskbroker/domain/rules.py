"""Assignment rules: who (group, attribute, OU, client network, time) gets which policy.

A rule's conditions are checked by one generator, ``AssignmentRule.checks``: ``matches``
(the login path) stops at the first failing check, ``explain`` (the admin's "why") lists
them with their reasons in words. Both read the same checks, so they cannot disagree.
"""

from __future__ import annotations

import ipaddress
import zoneinfo
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, tzinfo
from functools import cache
from typing import Annotated

from pydantic import Field, StringConstraints, field_validator

from deskbroker.domain.membership import AttributeFilter, FilterOp, FilterSpec
from deskbroker.domain.stored import StoredModel

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class Identity:
    """A user as an identity source describes them."""

    username: str
    groups: frozenset[str] = frozenset()
    attributes: dict[str, str] = field(default_factory=dict)
    ou: str = ""
    display_name: str = ""
    email: str = ""


@cache
def zone(name: str) -> tzinfo:
    """The time zone called ``name``; ``ValueError`` in words when there is none."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"{name!r} is not a time zone such as UTC or Europe/Paris (IANA names)"
        ) from exc


def days_words(days: frozenset[int]) -> str:
    """``{0,1,2,3,4}`` → ``Mon-Fri``; runs of days become ranges."""
    if len(days) == 7:
        return "every day"
    ordered = sorted(days)
    runs: list[list[int]] = []
    for day in ordered:
        if runs and day == runs[-1][-1] + 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ",".join(
        DAY_NAMES[r[0]] if len(r) == 1 else f"{DAY_NAMES[r[0]]}-{DAY_NAMES[r[-1]]}" for r in runs
    )


@dataclass(frozen=True)
class TimeWindow:
    """Days 0=Monday..6=Sunday, start inclusive, end exclusive; may wrap midnight.

    ``zone`` is the IANA time zone the window is read in. A moment without a time zone is
    taken to be in the window's zone already."""

    days: frozenset[int]
    start: time
    end: time
    zone: str = "UTC"

    def local(self, moment: datetime) -> datetime:
        return moment if moment.tzinfo is None else moment.astimezone(zone(self.zone))

    def contains(self, moment: datetime) -> bool:
        moment = self.local(moment)
        clock = moment.time()
        if self.start <= self.end:
            return moment.weekday() in self.days and self.start <= clock < self.end
        # Overnight windows belong to the day they start on.
        if clock >= self.start:
            return moment.weekday() in self.days
        return (moment.weekday() - 1) % 7 in self.days and clock < self.end

    def words(self) -> str:
        span = f"{self.start:%H:%M}-{self.end:%H:%M}"
        where = "" if self.zone == "UTC" else f" {self.zone}"
        return f"{days_words(self.days)} {span}{where}"


@dataclass(frozen=True)
class Check:
    """One condition of a rule, whether it holds, and why, in words."""

    condition: str  # group | attribute | ou | client | time
    ok: bool
    words: str


def _ou_parts(dn: str) -> list[str]:
    # "OU=Staff, DC=Example,DC=org" and "ou=staff,dc=example,dc=org" name the same OU.
    return [part.strip().replace(" =", "=").replace("= ", "=").lower() for part in dn.split(",")]


def within_ou(user_ou: str, ou: str) -> bool:
    """Is ``user_ou`` (a DN) the OU ``ou`` or below it, comparing whole components?"""
    mine, wanted = _ou_parts(user_ou), _ou_parts(ou)
    return len(mine) >= len(wanted) and mine[len(mine) - len(wanted) :] == wanted


def client_ip(client: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The client's address; an IPv4 address seen through an IPv6 socket counts as IPv4."""
    address = ipaddress.ip_address(client.strip())
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _attribute_check(rule: AttributeFilter, attributes: Mapping[str, str]) -> Check:
    ok = rule.matches(attributes)
    raw = attributes.get(rule.attribute)
    name, want = f"attribute {rule.attribute!r}", f"{rule.value!r}"
    verbs = {
        FilterOp.EQUALS: ("equals", "does not equal"),
        FilterOp.NOT_EQUALS: ("does not equal", "equals"),
        FilterOp.CONTAINS: ("contains", "does not contain"),
        FilterOp.NOT_CONTAINS: ("does not contain", "contains"),
        FilterOp.BEGINS_WITH: ("begins with", "does not begin with"),
        FilterOp.ENDS_WITH: ("ends with", "does not end with"),
    }
    if rule.op is FilterOp.EXISTS:
        return Check("attribute", ok, f"{name} is {'set' if ok else 'not set'}")
    if raw is None:
        return Check("attribute", ok, f"{name} is not set, so it {verbs[rule.op][not ok]} {want}")
    return Check("attribute", ok, f"{name} ({str(raw)!r}) {verbs[rule.op][not ok]} {want}")


def _client_check(cidr: str, client: str | None) -> Check:
    if client is None or not client.strip():
        return Check("client", False, f"no client address is known, so none is in {cidr}")
    try:
        inside = client_ip(client) in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return Check("client", False, f"{client!r} is not an IP address, so not in {cidr}")
    return Check("client", inside, f"{client} {'in' if inside else 'not in'} {cidr}")


def _time_check(window: TimeWindow, moment: datetime) -> Check:
    local = window.local(moment)
    inside = window.contains(moment)
    when = f"{local:%H:%M} {DAY_NAMES[local.weekday()]}"
    return Check("time", inside, f"{when} {'inside' if inside else 'outside'} {window.words()}")


Clock = Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]


def clock(text: str) -> time:
    """``"08:30"`` as a time of day."""
    hours, _, minutes = text.partition(":")
    return time(int(hours) % 24, int(minutes or 0))


class RuleWindow(StoredModel):
    """When a rule holds, as an administrator writes it: days, start and end, in a zone."""

    days: list[Annotated[int, Field(ge=0, le=6)]] = Field(min_length=1, max_length=7)
    start: Clock
    end: Clock
    timezone: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        default="UTC", description="IANA time zone the window is read in, e.g. Europe/Paris"
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone(value)  # raises ValueError in words
        return value

    def time_window(self) -> TimeWindow:
        return TimeWindow(frozenset(self.days), clock(self.start), clock(self.end), self.timezone)


class Conditions(StoredModel):
    """An assignment rule's conditions as written and stored; all given must hold."""

    group: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None
    attributes: list[FilterSpec] = Field(default_factory=list, max_length=20)
    ou: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None
    client_cidr: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    window: RuleWindow | None = None

    @field_validator("client_cidr")
    @classmethod
    def _cidr(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a network such as 10.0.0.0/8") from exc
        return value


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
    name: str = ""

    @property
    def is_default(self) -> bool:
        return (
            self.group is None
            and not self.attributes
            and self.ou is None
            and self.client_cidr is None
            and self.window is None
        )

    def checks(self, who: Identity, client: str | None, moment: datetime) -> Iterator[Check]:
        """Each condition of the rule in a fixed order, checked lazily."""
        if self.group is not None:
            member = self.group.lower() in {g.lower() for g in who.groups}
            yield Check(
                "group",
                member,
                f"group {self.group!r} {'among' if member else 'not among'} the user's groups",
            )
        for test in self.attributes:
            yield _attribute_check(test, who.attributes)
        if self.ou is not None:
            inside = bool(who.ou) and within_ou(who.ou, self.ou)
            where = f"the user's OU {who.ou!r}" if who.ou else "the user has no OU, so"
            yield Check("ou", inside, f"{where} {'is' if inside else 'is not'} within {self.ou!r}")
        if self.client_cidr is not None:
            yield _client_check(self.client_cidr, client)
        if self.window is not None:
            yield _time_check(self.window, moment)

    def matches(self, who: Identity, client: str | None, moment: datetime) -> bool:
        return all(check.ok for check in self.checks(who, client, moment))

    def explain(self, who: Identity, client: str | None, moment: datetime) -> RuleVerdict:
        """Every check of the rule, and the reason: the first that failed, or all held."""
        checks = tuple(self.checks(who, client, moment))
        failed = next((c for c in checks if not c.ok), None)
        if failed is not None:
            reason = failed.words
        elif not checks:
            reason = "the default rule: it has no conditions"
        else:
            reason = "; ".join(c.words for c in checks)
        return RuleVerdict(self, failed is None, reason, checks)


@dataclass(frozen=True)
class RuleVerdict:
    """One rule's outcome for one user, client and moment."""

    rule: AssignmentRule
    matched: bool
    reason: str
    checks: tuple[Check, ...]


def decide(
    rules: Sequence[AssignmentRule], who: Identity, client: str | None, moment: datetime
) -> AssignmentRule | None:
    """The first rule, in order, that matches; ``None`` when none does."""
    for rule in rules:
        if rule.matches(who, client, moment):
            return rule
    return None


def explain(
    rules: Sequence[AssignmentRule], who: Identity, client: str | None, moment: datetime
) -> tuple[list[RuleVerdict], AssignmentRule | None]:
    """Every rule's verdict in order, and the deciding rule (the one ``decide`` picks)."""
    verdicts = [rule.explain(who, client, moment) for rule in rules]
    deciding = next((v.rule for v in verdicts if v.matched), None)
    return verdicts, deciding

"""Which desktops belong to a pool: by center, attribute filters, explicit list, nesting."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any

from pydantic import StringConstraints

from deskbroker.domain.stored import StoredModel


class FilterOp(StrEnum):
    EQUALS = "equals"
    NOT_EQUALS = "not_equals"
    CONTAINS = "contains"
    NOT_CONTAINS = "not_contains"
    BEGINS_WITH = "begins_with"
    ENDS_WITH = "ends_with"
    EXISTS = "exists"


@dataclass(frozen=True)
class AttributeFilter:
    """One test on a desktop field (``name``, ``address``, ``os``...) or attribute/tag."""

    attribute: str
    op: FilterOp
    value: str = ""

    def matches(self, fields: Mapping[str, Any]) -> bool:
        raw = fields.get(self.attribute)
        if self.op is FilterOp.EXISTS:
            return raw is not None
        text = "" if raw is None else str(raw).lower()
        want = self.value.lower()
        match self.op:
            case FilterOp.EQUALS:
                return raw is not None and text == want
            case FilterOp.NOT_EQUALS:
                return text != want
            case FilterOp.CONTAINS:
                return want in text
            case FilterOp.NOT_CONTAINS:
                return want not in text
            case FilterOp.BEGINS_WITH:
                return text.startswith(want)
            case FilterOp.ENDS_WITH:
                return text.endswith(want)
        return False  # pragma: no cover - the enum is exhaustive


class FilterSpec(StoredModel):
    """An attribute filter as an administrator writes it (a pool's ``filters``, a rule's
    ``attributes``) and as it is stored."""

    attribute: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    op: FilterOp
    value: Annotated[str, StringConstraints(max_length=500)] = ""

    def rule(self) -> AttributeFilter:
        return AttributeFilter(self.attribute, self.op, self.value)


def filters_from_stored(stored: Iterable[Mapping[str, Any]] | None) -> tuple[AttributeFilter, ...]:
    """A stored list of filters (a pool's, a rule's) as the filters that test desktops."""
    return tuple(FilterSpec.from_stored(f).rule() for f in stored or ())


@dataclass(frozen=True)
class PoolDefinition:
    """How a pool selects desktops; all given criteria must hold."""

    pool_id: str
    center_ids: frozenset[str] = frozenset()
    filters: tuple[AttributeFilter, ...] = ()
    desktop_ids: frozenset[str] = frozenset()
    parent_pool_id: str | None = None
    # The centers the pool builds in (its provisioning's): only there does a desktop's
    # ``PROVISIONED_BY`` mark say the pool built it.
    build_center_ids: frozenset[str] = frozenset()
    # Offered to a global administrator: by its filters alone (no centers named) it takes
    # only desktops that a global administrator vouches for. Whoever controls a center
    # names its machines, so without this a tenant administrator's own cloud could put a
    # VM of theirs in front of the global administrator.
    guarded: bool = False


@dataclass(frozen=True)
class DesktopFacts:
    """What membership may look at for one desktop."""

    desktop_id: str
    center_id: str | None
    fields: Mapping[str, Any] = field(default_factory=dict)
    # Its center was last set up by a global administrator. A desktop of no center is
    # an administrator's own entry, checked when it is written (``standing.check_reach``).
    vouched: bool = True


# Desktops a pool provisioned carry its id, so they belong to it whatever its filters.
PROVISIONED_BY = "meta.deskbroker_pool"
# The attributes the engine writes itself (``PROVISIONED_BY``...): never an
# administrator's input.
ENGINE_PREFIX = "meta.deskbroker_"


def built_by(pool: PoolDefinition, desktop: DesktopFacts) -> bool:
    """Whether the desktop carries the pool's ``PROVISIONED_BY`` mark in a center the pool
    builds in or names. The mark is an attribute, which a cloud's metadata or another
    center's listing can carry too: elsewhere it would let whoever controls that center
    slip a machine into a pool they may not change."""
    if desktop.fields.get(PROVISIONED_BY) != pool.pool_id:
        return False
    return desktop.center_id in pool.build_center_ids or desktop.center_id in pool.center_ids


def matches_own_criteria(pool: PoolDefinition, desktop: DesktopFacts) -> bool:
    """The pool's own criteria, ignoring its parent."""
    if built_by(pool, desktop):
        return True
    if pool.desktop_ids:
        return desktop.desktop_id in pool.desktop_ids
    if pool.center_ids:
        if desktop.center_id not in pool.center_ids:
            return False
    elif pool.guarded and not desktop.vouched:
        return False
    return all(f.matches(desktop.fields) for f in pool.filters)


def members(
    pools: Sequence[PoolDefinition], desktops: Sequence[DesktopFacts]
) -> dict[str, set[str]]:
    """Pool id -> desktop ids, nested pools restricted to their parent's members."""
    by_id = {p.pool_id: p for p in pools}
    result: dict[str, set[str]] = {}

    def resolve(pool: PoolDefinition, trail: frozenset[str]) -> set[str]:
        if pool.pool_id in result:
            return result[pool.pool_id]
        own = {d.desktop_id for d in desktops if matches_own_criteria(pool, d)}
        parent = by_id.get(pool.parent_pool_id or "")
        if parent is not None and parent.pool_id not in trail:
            own &= resolve(parent, trail | {pool.pool_id})
        result[pool.pool_id] = own
        return own

    for pool in pools:
        resolve(pool, frozenset({pool.pool_id}))
    return result


def creates_cycle(pool_id: str, parent_id: str | None, parents: Mapping[str, str | None]) -> bool:
    """Would making ``parent_id`` the parent of ``pool_id`` create a nesting loop?"""
    seen = {pool_id}
    current = parent_id
    while current is not None:
        if current in seen:
            return True
        seen.add(current)
        current = parents.get(current)
    return False


def nested_under(pool_ids: Collection[str], parents: Mapping[str, str | None]) -> set[str]:
    """These pools and every pool nested under one of them, at any depth.

    A nested pool hands out only its parent's members, so whoever changes a parent
    changes what each pool below it offers. ``parents`` maps pool id to parent id; a
    nesting loop (refused when written) cannot make this run forever."""
    found = set(pool_ids)
    children: dict[str, list[str]] = {}
    for child, parent in parents.items():
        if parent is not None:
            children.setdefault(parent, []).append(child)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found

"""A per-node cache of what logins resolve, invalidated by the config version counter.

A version moved by one tenant's change reloads that tenant's rows only
(the ``config_changes`` table says which tenants each version changed): one tenant's
administrator writing in a loop costs every broker a reload of that tenant, not of every
tenant's configuration, on the next login of anyone.
"""

from __future__ import annotations

import threading
import time as clock
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from deskbroker.domain.offers import AssignmentKind, OfferOrdering
from deskbroker.domain.rules import AssignmentRule, Conditions
from deskbroker.protocols.plans import PlanEntry, entries_of
from deskbroker.store import snapshot
from deskbroker.store.claims import config_version
from deskbroker.store.db import Database, units_open


@dataclass(frozen=True)
class SourceView:
    id: str
    tenant_id: str
    name: str
    kind: str
    domain: str
    params: dict[str, Any]
    secrets_sealed: str | None
    rules: tuple[AssignmentRule, ...]
    # off | optional | required (deskbroker.domain.second_factor.SecondFactorMode)
    second_factor: str = "off"
    # Sent unknown names in a tenant that holds a global administrator (source_choice).
    set_by_global_admin: bool = True


@dataclass(frozen=True)
class EntryView:
    pool_id: str
    pool_name: str
    desktops: int
    assignment: AssignmentKind
    ordering: OfferOrdering
    backup_pool_id: str | None
    protocol_plan_id: str | None
    power_plan_id: str | None = None
    release_plan_id: str | None = None
    skip_lost_agents: bool = False
    # What the holder of a desktop of this pool may ask of its power (start, stop, reboot).
    user_power_actions: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PolicyView:
    id: str
    name: str
    max_desktops_per_user: int
    entries: tuple[EntryView, ...]
    tenant_id: str = ""


@dataclass(frozen=True)
class PoolView:
    id: str
    tenant_id: str
    name: str


@dataclass
class ConfigView:
    version: int
    tenants_by_name: dict[str, str] = field(default_factory=dict)
    sources_by_tenant: dict[str, list[SourceView]] = field(default_factory=dict)
    policies: dict[str, PolicyView] = field(default_factory=dict)
    pools: dict[str, PoolView] = field(default_factory=dict)
    protocol_plans: dict[str, list[PlanEntry]] = field(default_factory=dict)
    # Tenants that have a concurrent-session quota (its value may be newer in the row).
    session_quota_tenants: frozenset[str] = frozenset()
    # Custom roles' grants by (tenant id, role name).
    roles: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    # Each protocol plan's tenant, so a tenant's plans are replaced with its other rows.
    plan_tenants: dict[str, str] = field(default_factory=dict)
    # Built at the first look (``plans_by_pool``); a new version is a new view.
    _plans_by_pool: dict[str, tuple[str | None, str | None]] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _sources_by_id: dict[str, SourceView] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _offers_by_pool: dict[str, list[tuple[PolicyView, EntryView]]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def source(self, source_id: str) -> SourceView | None:
        """The enabled identity source of this id, whatever its tenant (an OpenID or
        second-factor sign-in names its source by id), without a walk of every
        tenant's sources per sign-in."""
        index = self._sources_by_id
        if index is None:
            index = {s.id: s for ss in self.sources_by_tenant.values() for s in ss}
            self._sources_by_id = index
        return index.get(source_id)

    def plans_by_pool(self) -> dict[str, tuple[str | None, str | None]]:
        """(power plan id, release plan id) of each pool some policy entry offers.

        Every agent event of a pooled desktop asks for its pool's plans: looked up in the
        site's policies one by one, an event's cost grew with every tenant's
        configuration. Two threads building it at once build the same index."""
        index = self._plans_by_pool
        if index is None:
            index = _plans_index(self.policies.values())
            self._plans_by_pool = index
        return index

    def offers_of(self, pool_ids: Iterable[str]) -> list[tuple[PolicyView, EntryView]]:
        """Each policy entry offering one of ``pool_ids`` (as its pool or its backup),
        once, with its policy: a rogue login's limits, without a walk of every tenant's
        policies per report (an agent's token is any tenant administrator's to mint)."""
        index = self._offers_by_pool
        if index is None:
            index = {}
            for policy in self.policies.values():
                for entry in policy.entries:
                    for pool_id in {entry.pool_id, entry.backup_pool_id} - {None}:
                        index.setdefault(str(pool_id), []).append((policy, entry))
            self._offers_by_pool = index
        found: list[tuple[PolicyView, EntryView]] = []
        seen: set[int] = set()  # an entry offering two of the pools counts once
        for pool_id in sorted(set(pool_ids)):
            for policy, entry in index.get(pool_id, ()):
                if id(entry) not in seen:
                    seen.add(id(entry))
                    found.append((policy, entry))
        return found


def _plans_index(
    policies: Iterable[PolicyView],
) -> dict[str, tuple[str | None, str | None]]:
    """When several policies offer the same pool, the first by policy name that names a
    plan wins, and an entry for the pool itself beats one using it as a backup pool."""
    offers: dict[str, list[tuple[int, str, EntryView]]] = {}
    for policy in policies:
        for entry in policy.entries:
            offers.setdefault(entry.pool_id, []).append((0, policy.name, entry))
            if entry.backup_pool_id is not None and entry.backup_pool_id != entry.pool_id:
                offers.setdefault(entry.backup_pool_id, []).append((1, policy.name, entry))
    index: dict[str, tuple[str | None, str | None]] = {}
    for pool_id, found in offers.items():
        found.sort(key=lambda item: (item[0], item[1]))
        power = next((e.power_plan_id for _, _, e in found if e.power_plan_id), None)
        release = next((e.release_plan_id for _, _, e in found if e.release_plan_id), None)
        index[pool_id] = (power, release)
    return index


def rule_from_row(row: dict[str, Any]) -> AssignmentRule:
    """The domain rule for a stored rule row (its conditions read back as ``Conditions``)."""
    cond = Conditions.from_stored(row.get("conditions"))
    return AssignmentRule(
        rule_id=row["id"],
        policy_id=row.get("policy_id"),
        role=row.get("role") or "user",
        group=cond.group,
        attributes=tuple(a.rule() for a in cond.attributes),
        ou=cond.ou,
        client_cidr=cond.client_cidr,
        window=cond.window.time_window() if cond.window else None,
        name=row.get("name") or "",
    )


def build_view(rows: snapshot.ConfigRows) -> ConfigView:
    view = ConfigView(version=rows.version)
    view.tenants_by_name = {t["name"]: t["id"] for t in rows.tenants}
    view.session_quota_tenants = frozenset(
        t["id"] for t in rows.tenants if t.get("quota_sessions") is not None
    )
    rules_by_source: dict[str, list[AssignmentRule]] = {}
    for rule in rows.rules:
        rules_by_source.setdefault(rule["identity_source_id"], []).append(rule_from_row(rule))
    for src in rows.sources:
        if not src["enabled"]:
            continue
        view.sources_by_tenant.setdefault(src["tenant_id"], []).append(
            SourceView(
                id=src["id"],
                tenant_id=src["tenant_id"],
                name=src["name"],
                kind=src["kind"],
                domain=(src["domain"] or "").lower(),
                params=src["params"] or {},
                secrets_sealed=src["secrets_sealed"],
                rules=tuple(rules_by_source.get(src["id"], [])),
                second_factor=src.get("second_factor") or "off",
                set_by_global_admin=bool(src.get("set_by_global_admin", True)),
            )
        )
    view.pools = {p["id"]: PoolView(p["id"], p["tenant_id"], p["name"]) for p in rows.pools}
    entries_by_policy: dict[str, list[EntryView]] = {}
    for e in rows.entries:
        entries_by_policy.setdefault(e["policy_id"], []).append(
            EntryView(
                pool_id=e["pool_id"],
                pool_name=view.pools[e["pool_id"]].name if e["pool_id"] in view.pools else "",
                desktops=e["desktops"],
                assignment=AssignmentKind(e["assignment"]),
                ordering=OfferOrdering(e["ordering"]),
                backup_pool_id=e["backup_pool_id"],
                protocol_plan_id=e["protocol_plan_id"],
                power_plan_id=e.get("power_plan_id"),
                release_plan_id=e.get("release_plan_id"),
                skip_lost_agents=bool(e.get("skip_lost_agents")),
                user_power_actions=frozenset(e.get("user_power_actions") or ()),
            )
        )
    view.policies = {
        p["id"]: PolicyView(
            p["id"],
            p["name"],
            p["max_desktops_per_user"],
            tuple(entries_by_policy.get(p["id"], [])),
            p["tenant_id"],
        )
        for p in rows.policies
    }
    view.protocol_plans = {p["id"]: entries_of(p["protocols"]) for p in rows.protocol_plans}
    view.plan_tenants = {p["id"]: p["tenant_id"] for p in rows.protocol_plans}
    view.roles = {(r["tenant_id"], r["name"]): tuple(r["permissions"] or []) for r in rows.roles}
    return view


def merged(view: ConfigView, part: ConfigView, tenants: set[str]) -> ConfigView:
    """``view`` with every row of ``tenants`` replaced by ``part`` (those tenants' rows
    as they are now, built alone), at ``part``'s version. A tenant in ``tenants`` with
    no row in ``part`` was deleted: nothing of it is kept. Every part of the view is of
    one tenant (a policy's entries, a rule's policy, a pool's name: all its own), so a
    tenant's rows built alone are what a whole build holds of them."""

    def kept(tenant_id: str) -> bool:
        return tenant_id not in tenants

    out = ConfigView(version=part.version)
    out.tenants_by_name = {n: t for n, t in view.tenants_by_name.items() if kept(t)}
    out.tenants_by_name.update(part.tenants_by_name)
    out.session_quota_tenants = (
        frozenset(t for t in view.session_quota_tenants if kept(t)) | part.session_quota_tenants
    )
    out.sources_by_tenant = {t: s for t, s in view.sources_by_tenant.items() if kept(t)}
    out.sources_by_tenant.update(part.sources_by_tenant)
    out.policies = {i: p for i, p in view.policies.items() if kept(p.tenant_id)}
    out.policies.update(part.policies)
    out.pools = {i: p for i, p in view.pools.items() if kept(p.tenant_id)}
    out.pools.update(part.pools)
    out.plan_tenants = {i: t for i, t in view.plan_tenants.items() if kept(t)}
    out.plan_tenants.update(part.plan_tenants)
    out.protocol_plans = {
        i: plan for i, plan in view.protocol_plans.items() if i in out.plan_tenants
    }
    out.protocol_plans.update(part.protocol_plans)
    out.roles = {key: grants for key, grants in view.roles.items() if kept(key[0])}
    out.roles.update(part.roles)
    return out


def _reload(session: Any, view: ConfigView | None) -> ConfigView:
    """The view as the database holds it now: ``view`` with the tenants changed since
    its version reloaded, or everything loaded again when that cannot be told."""
    version = config_version(session)
    changed = snapshot.changed_tenants(session, view.version, version) if view else None
    if view is None or changed is None:
        return build_view(snapshot.load(session, version=version))
    return merged(view, build_view(snapshot.load(session, changed, version)), changed)


# ``_checked`` of a view this node knows to be behind its own write.
_STALE = float("-inf")


class ConfigCache:
    """Holds one ``ConfigView``; reloads when a newer version is seen."""

    def __init__(self, max_age_s: float = 2.0) -> None:
        self._view: ConfigView | None = None
        self._lock = threading.Lock()
        self._checked = 0.0
        # Moved by every ``stale``: a check that began before one does not count.
        self._marks = 0
        self.max_age_s = max_age_s

    def peek(self, db: Database) -> ConfigView:
        """The view as held, unchecked: for the login path, whose first statement reads
        the version and calls ``current`` with it."""
        view = self._view
        if view is None or self._checked == _STALE:
            return self.current(db)
        return view

    def current(
        self, db: Database, seen_version: int | None = None, *, fresh: bool = False
    ) -> ConfigView:
        """The view at ``seen_version`` (the login path reads it anyway); without one,
        a view older than ``max_age_s`` (or any view, with ``fresh``) is checked against
        the database's version, so another broker's change reaches connects and agent
        events within seconds.

        Asked inside a unit of work (a connect's quota and protocol plan, an agent
        event's plans), the view is answered as held: checking it there would take a
        second pooled connection while the unit holds one, and a node whose threads all
        did so at once would wait for its pool's timeout. Such callers look once before
        their unit opens, which checks the view's age."""
        view = self._view
        if seen_version is None and view is not None:
            if not fresh and (units_open() or clock.monotonic() - self._checked < self.max_age_s):
                return view
            marks = self._marks
            with db.read() as session:
                seen_version = config_version(session)
            self._checked_since(marks)
        if view is not None and (seen_version is None or seen_version == view.version):
            return view
        with self._lock:
            view = self._view
            if view is not None and (seen_version is None or seen_version <= view.version):
                return view
            marks = self._marks
            with db.read() as session:
                loaded = _reload(session, view)
            self._view = loaded
            self._checked_since(marks)
            return loaded

    def _checked_since(self, marks: int) -> None:
        """The view was checked just now, unless this node wrote meanwhile (``stale``
        after the version was read): then it stays stale, so the next look checks again
        and the writer's next request sees its own write."""
        if self._marks == marks:
            self._checked = clock.monotonic()

    def plans_for_pool(self, db: Database, pool_id: str) -> tuple[str | None, str | None]:
        """(power plan id, release plan id) of the policy entry that offers ``pool_id``.

        When several policies offer the same pool, the first by policy name that names a
        plan wins, and an entry for the pool itself beats one using it as a backup pool.
        """
        return self.current(db).plans_by_pool().get(pool_id, (None, None))

    def stale(self, db: Database | None = None) -> None:
        """This node changed the configuration (and moved the version): the next look
        checks the version and reloads what changed, whatever the view's age. With
        ``db``, the writer reloads it now (the changed tenant's rows), so the logins
        after a write do not each ask for the version and wait for the reload."""
        self._marks += 1
        self._checked = _STALE
        if db is not None and self._view is not None:
            self.current(db, fresh=True)

    def invalidate(self) -> None:
        """Forget the view: the next look loads everything (after rows were written
        without moving the version, as tools and tests do)."""
        self._view = None

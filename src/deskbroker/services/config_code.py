"""Configuration as code: a tenant's configuration as one document.

A tenant's configuration is one document (``services/config_document.py`` says its
shape and exports it). ``plan`` says what applying a document would change, object by
object; ``apply`` makes those changes in one unit of work, all or nothing.

- A section the document leaves out (or sets to null) is not managed: its objects stay
  as they are. A section that is there is the whole truth for its kind: an object of that
  kind the document does not name is deleted.
- Every change goes through the admin catalog's own hooks (``catalog_crud``): the same
  checks, standing rules, audit events and refusals as the one-object routes, and the
  actor needs the permission each change needs (``pools:create``...), not only
  ``config:apply``.
- Secrets are never exported: ``secrets: stored`` keeps what the broker holds; a map
  sets new ones; null removes them.
- ``plan`` rehearses the apply in a unit that is rolled back, so what it reports
  (including a refusal, e.g. a pool still in use) is exactly what ``apply`` would do.
- A pool the document deletes while users hold desktops from it is refused, naming
  them; with ``force`` those assignments are released first (each shown in the plan as a
  ``release``), as an administrator's release would, stronger accounts excepted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

from deskbroker.errors import Conflict, DeskbrokerError, InvalidInput
from deskbroker.security import TokenClaims
from deskbroker.services import access
from deskbroker.services.catalog_crud import Catalog, audit_event
from deskbroker.services.config_document import (
    CATALOG,
    LABEL,
    PLAN_SECTIONS,
    RULES,
    SECTIONS,
    STORED,
    Change,
    DocumentState,
    Outcome,
)
from deskbroker.services.context import BrokerContext
from deskbroker.services.queues import pool_writes_batched
from deskbroker.services.standing import may_manage
from deskbroker.services.write_context import attach_actor
from deskbroker.store import claims, config_rows, events, membership, references
from deskbroker.store.config_version import bump_config_version
from deskbroker.store.db import Unit
from deskbroker.store.tables import User


class _Rehearsed(Exception):
    """Rolls back a plan's rehearsal, carrying what it found."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__("rehearsal")
        self.outcome = outcome


# --- plan and apply --------------------------------------------------------------------
def plan(
    ctx: BrokerContext,
    who: TokenClaims,
    tenant_id: str,
    document: Mapping[str, Any],
    catalogs: Mapping[str, Catalog[Any]],
    *,
    force: bool = False,
) -> Outcome:
    """What applying ``document`` would change; rehearsed and rolled back, so a refusal
    the apply would meet is reported (``refused``) instead of raised."""
    _readable(ctx, who, document)
    try:
        with ctx.db.write() as session:
            attach_actor(session, ctx, who)
            converge = _Converge(session, ctx, who, tenant_id, catalogs, force=force)
            try:
                converge.run(document)
            except DeskbrokerError as exc:
                raise _Rehearsed(Outcome(converge.changes, converge.unchanged, exc)) from exc
            raise _Rehearsed(Outcome(converge.changes, converge.unchanged))
    except _Rehearsed as rehearsed:
        return rehearsed.outcome


def apply(
    ctx: BrokerContext,
    who: TokenClaims,
    tenant_id: str,
    document: Mapping[str, Any],
    catalogs: Mapping[str, Catalog[Any]],
    *,
    force: bool = False,
) -> Outcome:
    """Make the tenant's configuration what ``document`` says, in one unit of work:
    every change or none (the first refusal is raised, naming the object)."""
    _readable(ctx, who, document)
    with ctx.db.write() as session:
        attach_actor(session, ctx, who)
        converge = _Converge(session, ctx, who, tenant_id, catalogs, force=force)
        converge.run(document)
        if converge.changes:
            audit_event(
                session,
                who,
                "admin.config_apply",
                tenant_id=tenant_id,
                detail={
                    "changes": len(converge.changes),
                    "created": sum(c.action == "create" for c in converge.changes),
                    "updated": sum(c.action == "update" for c in converge.changes),
                    "deleted": sum(c.action == "delete" for c in converge.changes),
                },
            )
            # Each catalog write moved it already; this names the tenant once more for
            # whatever the document changed otherwise (one version per unit and tenant).
            bump_config_version(session, tenant_id)
    if converge.changes:
        # The tenant's rows reloaded, not every tenant's: a document applied in a loop
        # (an empty one changes nothing) made every login of this node wait for whole
        # reloads of the site's configuration.
        ctx.cache.stale(ctx.db)
    return Outcome(converge.changes, converge.unchanged)


def _readable(ctx: BrokerContext, who: TokenClaims, document: Mapping[str, Any]) -> None:
    """A plan shows the stored form of every object a section manages: reading them is
    the actor's right only if they may read that kind."""
    for section, path, _ in SECTIONS:
        if document.get(section) is not None:
            access.authorize(ctx, who, f"{path}:read")
    if document.get("identity_sources") is not None:
        access.authorize(ctx, who, f"{RULES}:read")


def _located(where: str, name: str, exc: DeskbrokerError) -> DeskbrokerError:
    """The same refusal, saying which object of the document met it (unless it already
    names the field)."""
    if exc.detail.startswith(where):
        return exc
    return type(exc)(f"{where} ({name}): {exc.detail}", **exc.extra)


class _Converge:
    """One walk from the tenant's stored configuration to a document's."""

    def __init__(
        self,
        session: Unit,
        ctx: BrokerContext,
        who: TokenClaims,
        tenant_id: str,
        catalogs: Mapping[str, Catalog[Any]],
        *,
        force: bool = False,
    ) -> None:
        self.session = session
        self.force = force
        self.ctx = ctx
        self.who = who
        self.tenant_id = tenant_id
        self.catalogs = catalogs
        # Before any write: the document's first writes (a role, a plan, a source) lock
        # rows an administrator's edit holding the tenant's membership may wait for
        # (``membership.hold``: the lock comes before such rows).
        membership.hold(session, tenant_id)
        self.state = DocumentState.read(session, tenant_id)
        # section -> name -> id, for every object the document leaves in place or makes.
        self.ids: dict[str, dict[str, str]] = {
            section: {name: row.id for name, row in rows.items()}
            for section, rows in self.state.rows.items()
        }
        self.changes: list[Change] = []
        self.unchanged = 0
        self.managed: dict[str, set[str]] = {}

    # -- the walk -----------------------------------------------------------------------
    def run(self, document: Mapping[str, Any]) -> None:
        wanted: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for section, _, _ in SECTIONS:
            entries = document.get(section)
            if entries is None:
                continue
            seen: set[str] = set()
            for i, entry in enumerate(entries):
                if entry["name"] in seen:
                    raise InvalidInput(
                        f"{section}[{i}].name: {LABEL[section]} {entry['name']!r} appears "
                        "twice in the document"
                    )
                seen.add(entry["name"])
            self.managed[section] = seen
            wanted[section] = list(enumerate(entries))
        if "pools" in wanted:
            wanted["pools"] = self._parents_first([e for _, e in wanted["pools"]])
        for section, _, _ in SECTIONS:
            # Each pool written would refresh every pool of the tenant: quadratic in the
            # document's pools. Their one refresh runs as the section ends, before the
            # policies, rules and deletes whose checks read the members (nothing in the
            # pools' own checks does: ``standing.check_reach`` reads a pool's definition).
            batch = pool_writes_batched(self.session) if section == "pools" else nullcontext()
            with batch:
                for i, entry in wanted.get(section, []):
                    self._converge_one(section, i, entry)
        for section, _, _ in reversed(SECTIONS):
            if section not in wanted:
                continue
            gone = sorted(set(self.state.rows[section]) - self.managed[section])
            if section == "pools":
                gone = self._children_first(gone)
            for name in gone:
                row = self.state.rows[section][name]
                where = section
                if section == "identity_sources":
                    for rule in reversed(self.state.rules.get(name, [])):
                        self._delete(RULES, f"{name}/{rule.name or rule.position}", rule, where)
                self._delete(section, name, row, where)

    def _parents_first(self, entries: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
        """The document's pools with their index, each after its parent (if the
        document makes it); a nesting cycle is refused."""
        by_name = {e["name"]: (i, e) for i, e in enumerate(entries)}
        ordered: list[tuple[int, dict[str, Any]]] = []
        placed: set[str] = set()

        def place(name: str, trail: tuple[str, ...]) -> None:
            if name in placed:
                return
            i, entry = by_name[name]
            parent = entry.get("parent")
            if parent in trail:
                raise InvalidInput(f"pools[{i}].parent: pool {name} would be nested inside itself")
            if isinstance(parent, str) and parent in by_name:
                place(parent, (*trail, name))
            placed.add(name)
            ordered.append((i, entry))

        for entry in entries:
            place(entry["name"], ())
        return ordered

    def _children_first(self, names: list[str]) -> list[str]:
        rows = self.state.rows["pools"]
        depth: dict[str, int] = {}

        def level(name: str, hops: int = 0) -> int:
            parent = self.state._name("pools", rows[name].parent_pool_id)
            if parent is None or parent not in rows or hops > len(rows):
                return 0
            return 1 + level(parent, hops + 1)

        for name in names:
            depth[name] = level(name)
        return sorted(names, key=lambda n: (-depth[n], n))

    def _catalog(self, path: str) -> Catalog[Any]:
        return self.catalogs[path]

    def _converge_one(self, section: str, i: int, entry: dict[str, Any]) -> None:
        path = CATALOG[section]
        name = entry["name"]
        where = f"{section}[{i}]"
        existing = self.state.rows[section].get(name)
        nested = section == "identity_sources"  # its rules are objects of their own
        wanted = {k: v for k, v in entry.items() if not (nested and k == "rules")}
        try:
            if existing is None:
                self._create(section, path, where, wanted)
            else:
                self._update(section, path, where, existing, wanted)
            if section == "identity_sources" and entry.get("rules") is not None:
                self._converge_rules(where, name, entry["rules"])
        except DeskbrokerError as exc:
            raise _located(where, name, exc) from exc

    def _create(self, section: str, path: str, where: str, wanted: dict[str, Any]) -> None:
        access.authorize(self.ctx, self.who, f"{path}:create")
        if wanted.get("secrets") == STORED:
            raise InvalidInput(
                f"{where}.secrets: 'stored' keeps the secrets the broker holds, and this "
                f"{LABEL[section]} does not exist yet: give its secrets"
            )
        data = self._data(section, where, wanted, set(wanted))
        obj = self._catalog(path).create_in(self.session, self.ctx, self.who, self.tenant_id, data)
        self.ids[section][obj.name] = obj.id
        self.state.names[section][obj.id] = obj.name
        self.changes.append(Change("create", section, obj.name, sorted(wanted)))

    def _update(
        self, section: str, path: str, where: str, existing: Any, wanted: dict[str, Any]
    ) -> None:
        stored = self.state.entry(section, existing.name)
        if section == "identity_sources":
            stored.pop("rules")
        differ = {k for k, v in wanted.items() if stored.get(k) != v}
        same_secrets = False
        if "secrets" in wanted:
            if wanted["secrets"] == STORED:
                if not existing.secrets_sealed:
                    raise InvalidInput(
                        f"{where}.secrets: 'stored' keeps the secrets the broker holds, and "
                        f"it holds none for this {LABEL[section]}: give them, or write null"
                    )
                differ.discard("secrets")
            elif isinstance(wanted["secrets"], dict) and existing.secrets_sealed:
                # Written (so authorised and checked) whatever the broker holds: only a
                # caller allowed to write them learns, as "unchanged", that they are equal.
                # Otherwise a plan would be an oracle for stored secrets.
                held = json.loads(self.ctx.secrets.open(existing.secrets_sealed))
                same_secrets = held == wanted["secrets"]
                differ.add("secrets")
        if not differ:
            self.unchanged += 1
            return
        for fixed in ("kind",):
            if fixed in differ:
                raise InvalidInput(
                    f"{where}.{fixed}: a {LABEL[section]}'s kind cannot change (it is "
                    f"{stored[fixed]}); delete it and make a new one"
                )
        access.authorize(self.ctx, self.who, f"{path}:update")
        data = self._data(section, where, wanted, differ)
        had_secrets = bool(getattr(existing, "secrets_sealed", None))
        # A document may write a value as the catalog would not store it (params without
        # their defaults...): the update is tried under a savepoint, and undone (no
        # change, no audit event) when the stored object comes out the same.
        savepoint = self.session.begin_nested()
        self._catalog(path).update_in(self.session, self.ctx, self.who, existing, data)
        if wanted.get("secrets") == STORED and had_secrets and not existing.secrets_sealed:
            # The catalog drops secrets given for another server or TLS setting.
            raise InvalidInput(
                f"{where}.secrets: the address or TLS settings change, so the stored "
                "secrets cannot follow them; give them again"
            )
        after = self.state.refreshed(self.session, section, existing)
        real = {
            k
            for k in differ
            if (k == "secrets" and not same_secrets) or after.get(k) != stored.get(k)
        }
        if not real:
            savepoint.rollback()
            self.unchanged += 1
            return
        savepoint.commit()
        self.changes.append(Change("update", section, existing.name, sorted(real)))

    def _delete(self, path_or_section: str, name: str, row: Any, where: str) -> None:
        path = CATALOG.get(path_or_section, path_or_section)
        try:
            access.authorize(self.ctx, self.who, f"{path}:delete")
            if path_or_section == "pools":
                self._release_held(row)
            self._catalog(path).delete_in(self.session, self.who, row)
        except DeskbrokerError as exc:
            raise _located(where, f"{name}, deleted as the document leaves it out", exc) from exc
        section = path_or_section if path_or_section in CATALOG else "rules"
        self.changes.append(Change("delete", section, name))

    def _release_held(self, pool: Any) -> None:
        """The assignments of a pool the document deletes: refused in words, or released
        first with ``force``."""
        held = references.assigned_desktops_of_pool(self.session, pool.id)
        if not held:
            return
        if not self.force:
            names = ", ".join(name for _, name, _ in held[:5]) + (", ..." if len(held) > 5 else "")
            raise Conflict(
                f"pool {pool.name} still has {len(held)} assigned desktops ({names}); "
                "release them first, or apply with force (--force) to release them"
            )
        access.authorize(self.ctx, self.who, "assignments:delete")
        for desktop_id, desktop_name, user_id in held:
            holder = self.session.get(User, user_id)
            if holder is not None:
                # Taking a stronger account's desktop away is choosing its next one.
                may_manage(self.session, holder, "release the desktop of")
            claims.unassign(self.session, desktop_id=desktop_id, user_id=user_id)
            events.append(
                self.session,
                "release",
                tenant_id=pool.tenant_id,
                actor=self.who.username,
                user_id=user_id,
                desktop_id=desktop_id,
                pool_id=pool.id,
                detail={"reason": "config apply deleted the pool"},
            )
            who = holder.username if holder is not None else user_id
            self.changes.append(Change("release", "desktops", desktop_name, [who]))

    # -- rules ----------------------------------------------------------------------------
    def _converge_rules(self, where: str, source: str, rules: list[dict[str, Any]]) -> None:
        """A source's rules, matched in order: the document's first rule with its first
        stored one, and so on; those left over are made or deleted."""
        stored = self.state.rules.get(source, [])
        source_id = self.ids["identity_sources"][source]
        catalog = self._catalog(RULES)
        for j, wanted in enumerate(rules):
            at = f"{where}.rules[{j}]"
            label = f"{source}/{wanted['name'] or wanted['position']}"
            data = self._rule_data(at, wanted)
            try:
                if j < len(stored):
                    row = stored[j]
                    current = self.state.rule(row)
                    differ = sorted(k for k, v in wanted.items() if current.get(k) != v)
                    if not differ:
                        self.unchanged += 1
                        continue
                    access.authorize(self.ctx, self.who, f"{RULES}:update")
                    key = {"policy": "policy_id"}
                    changed = {key.get(k, k): data[key.get(k, k)] for k in differ}
                    catalog.update_in(self.session, self.ctx, self.who, row, changed)
                    self.changes.append(Change("update", "rules", label, differ))
                else:
                    access.authorize(self.ctx, self.who, f"{RULES}:create")
                    data["identity_source_id"] = source_id
                    catalog.create_in(self.session, self.ctx, self.who, self.tenant_id, data)
                    self.changes.append(Change("create", "rules", label, sorted(wanted)))
            except DeskbrokerError as exc:
                raise _located(at, label, exc) from exc
        for row in reversed(stored[len(rules) :]):
            self._delete(RULES, f"{source}/{row.name or row.position}", row, where)

    def _rule_data(self, at: str, wanted: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": wanted["name"],
            "position": wanted["position"],
            "conditions": wanted["conditions"],
            "policy_id": self._ref(f"{at}.policy", "policies", wanted["policy"]),
            "role": wanted["role"],
        }

    # -- from the document's names to the catalog's ids ---------------------------------
    def _ref(self, at: str, section: str, name: str | None) -> str | None:
        """The id of the object ``name`` names: one the document makes or keeps (where
        it manages that section), else one the tenant has."""
        if name is None:
            return None
        managed = self.managed.get(section)
        found = self.ids[section].get(name)
        if found is None or (managed is not None and name not in managed):
            where = "in the document" if managed is not None else "in this tenant"
            raise InvalidInput(f"{at}: there is no {LABEL[section]} named {name!r} {where}")
        return found

    def _data(
        self, section: str, where: str, wanted: dict[str, Any], fields: set[str]
    ) -> dict[str, Any]:
        """The catalog's data for the ``fields`` of one document entry."""
        data: dict[str, Any] = {}
        for key in sorted(fields):
            value = wanted[key]
            at = f"{where}.{key}"
            if key == "secrets":
                data["secrets"] = value
            elif section == "pools" and key == "centers":
                data["center_ids"] = [
                    self._ref(f"{at}[{n}]", "centers", c) for n, c in enumerate(value)
                ]
            elif section == "pools" and key == "parent":
                data["parent_pool_id"] = self._ref(at, "pools", value)
            elif section == "pools" and key == "desktops":
                data["desktop_ids"] = self._desktops(at, value)
            elif section == "pools" and key == "provisioning":
                provisioning = dict(value)
                center = provisioning.pop("center", None)
                spread = provisioning.pop("centers", None) or []
                per = provisioning.pop("center_parameters", None) or {}
                data["provisioning"] = {
                    **provisioning,
                    "center_id": self._ref(f"{at}.center", "centers", center),
                }
                if spread or per:  # a pool building in several centers, named by name
                    data["provisioning"]["centers"] = [
                        self._ref(f"{at}.centers[{n}]", "centers", c) for n, c in enumerate(spread)
                    ]
                    data["provisioning"]["center_parameters"] = {
                        self._ref(f"{at}.center_parameters.{c}", "centers", c): v
                        for c, v in per.items()
                    }
            elif section == "policies" and key == "entries":
                data["entries"] = [self._entry(f"{at}[{n}]", e) for n, e in enumerate(value)]
            else:
                data[key] = value
        return data

    def _entry(self, at: str, entry: dict[str, Any]) -> dict[str, Any]:
        out = {k: entry[k] for k in ("desktops", "assignment", "ordering", "skip_lost_agents")}
        out["pool_id"] = self._ref(f"{at}.pool", "pools", entry["pool"])
        out["backup_pool_id"] = self._ref(f"{at}.backup_pool", "pools", entry["backup_pool"])
        for key, section in PLAN_SECTIONS.items():
            out[f"{key}_id"] = self._ref(f"{at}.{key}", section, entry[key])
        return out

    def _desktops(self, at: str, wanted: list[dict[str, Any]]) -> list[str]:
        center_ids = {
            c: self._ref(f"{at}[{n}].center", "centers", c)
            for n, c in enumerate(d["center"] for d in wanted)
        }
        found = config_rows.desktops_named(
            self.session, self.tenant_id, [c for c in center_ids.values() if c]
        )
        out = []
        for n, d in enumerate(wanted):
            desktop = found.get((center_ids[d["center"]] or "", d["name"]))
            if desktop is None:
                raise InvalidInput(
                    f"{at}[{n}]: center {d['center']} has no desktop named {d['name']!r} "
                    "(yet: a desktop is found by a scan, so scan the center first)"
                )
            out.append(desktop)
        return out

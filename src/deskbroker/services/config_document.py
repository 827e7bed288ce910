"""Configuration as code, the document: what a tenant's configuration looks like as one
document, and reading it (``export``).

The document names objects by name, never by id, so it can be applied to another tenant
or another broker (``services/config_code.py`` plans and applies one). Its sections, in
the order they are created, are ``SECTIONS``; secrets are never exported (``secrets:
stored`` stands for what the broker holds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deskbroker.errors import DeskbrokerError, Forbidden, InvalidInput
from deskbroker.security import TokenClaims
from deskbroker.services import access
from deskbroker.services.context import BrokerContext
from deskbroker.store import config_rows, policy_entries
from deskbroker.store.db import Unit
from deskbroker.store.tables import (
    Center,
    CustomRole,
    IdentitySource,
    Policy,
    Pool,
    PowerPlan,
    ProtocolPlan,
    ReleasePlan,
    Tenant,
)

# What ``secrets`` says to keep the secrets the broker holds (it never exports them).
STORED = "stored"
RULES = "assignment-rules"

# The document's sections in the order they are created (what one names comes first),
# with the catalog (admin API path) each is managed through and its table.
SECTIONS: tuple[tuple[str, str, type[Any]], ...] = (
    ("roles", "roles", CustomRole),
    ("centers", "centers", Center),
    ("protocol_plans", "protocol-plans", ProtocolPlan),
    ("power_plans", "power-plans", PowerPlan),
    ("release_plans", "release-plans", ReleasePlan),
    ("pools", "pools", Pool),
    ("policies", "policies", Policy),
    ("identity_sources", "identity-sources", IdentitySource),
)
CATALOG = {section: path for section, path, _ in SECTIONS}
LABEL = {
    "roles": "role",
    "centers": "center",
    "protocol_plans": "protocol plan",
    "power_plans": "power plan",
    "release_plans": "release plan",
    "pools": "pool",
    "policies": "policy",
    "identity_sources": "identity source",
}
PLAN_SECTIONS = {
    "protocol_plan": "protocol_plans",
    "power_plan": "power_plans",
    "release_plan": "release_plans",
}


@dataclass
class Change:
    """One object a document creates, changes or deletes."""

    action: str  # create | update | delete
    section: str
    name: str
    fields: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "section": self.section,
            "name": self.name,
            "fields": self.fields,
        }


@dataclass
class Outcome:
    """What a document changes (or would), and what refused it, if anything."""

    changes: list[Change]
    unchanged: int
    refused: DeskbrokerError | None = None

    def as_dict(self, applied: bool) -> dict[str, Any]:
        refused = self.refused
        return {
            "applied": applied,
            "changes": [c.as_dict() for c in self.changes],
            "unchanged": self.unchanged,
            "refused": None
            if refused is None
            else {"status": refused.status, "detail": refused.detail},
        }


# --- which tenant ----------------------------------------------------------------------
def tenant_of(ctx: BrokerContext, who: TokenClaims, requested: str | None) -> str:
    """The tenant a document is read from or applied to: the admin's own, or (a global
    admin only) the one ``requested`` names. Another tenant's id is refused exactly as
    a made-up one is."""
    if requested is None or requested == who.tenant_id:
        return who.tenant_id
    if who.role != "global_admin":
        raise Forbidden("you can only export or apply your own tenant's configuration")
    with ctx.db.read() as session:
        if session.get(Tenant, requested) is None:
            raise InvalidInput(f"tenant {requested} does not exist")
    return requested


# --- export ----------------------------------------------------------------------------
def export(ctx: BrokerContext, who: TokenClaims, tenant_id: str) -> dict[str, Any]:
    """The tenant's configuration as a document (what the actor may read of it)."""
    for _, path, _ in SECTIONS:
        access.authorize(ctx, who, f"{path}:read")
    access.authorize(ctx, who, f"{RULES}:read")
    with ctx.db.read() as session:
        return DocumentState.read(session, tenant_id).document()


def _secrets_out(row: Any) -> str | None:
    return STORED if row.secrets_sealed else None


@dataclass
class DocumentState:
    """The tenant's objects of each section by name, and the ids they go by."""

    tenant_id: str
    rows: dict[str, dict[str, Any]]
    rules: dict[str, list[Any]]  # identity source name -> its rules in order
    names: dict[str, dict[str, str]]  # section -> id -> name

    @classmethod
    def read(cls, session: Unit, tenant_id: str) -> DocumentState:
        rows: dict[str, dict[str, Any]] = {}
        names: dict[str, dict[str, str]] = {}
        for section, _, model in SECTIONS:
            found = config_rows.tenant_rows(session, model, tenant_id)
            rows[section] = {r.name: r for r in found}
            names[section] = {r.id: r.name for r in found}
        rules = {
            name: config_rows.source_rules(session, source.id)
            for name, source in rows["identity_sources"].items()
        }
        state = cls(tenant_id, rows, rules, names)
        state._entries = {
            name: policy_entries.read(session, policy.id)
            for name, policy in rows["policies"].items()
        }
        desktop_ids = {d for pool in rows["pools"].values() for d in pool.desktop_ids or []}
        state._desktops = config_rows.desktop_names(session, tenant_id, desktop_ids)
        return state

    _entries: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _desktops: dict[str, tuple[str, str]] = field(default_factory=dict)

    def _name(self, section: str, object_id: str | None) -> str | None:
        if object_id is None:
            return None
        return self.names[section].get(object_id, object_id)

    def refreshed(self, session: Unit, section: str, row: Any) -> dict[str, Any]:
        """One object as the document writes it, read again after a write."""
        if section == "policies":
            self._entries[row.name] = policy_entries.read(session, row.id)
        if section == "pools":
            self._desktops.update(
                config_rows.desktop_names(session, self.tenant_id, row.desktop_ids or [])
            )
        out = self.entry(section, row.name)
        out.pop("rules", None)  # a source's rules are compared one by one
        return out

    def entry(self, section: str, name: str) -> dict[str, Any]:
        """One object as the document writes it."""
        row = self.rows[section][name]
        shape: Callable[[Any], dict[str, Any]] = getattr(self, f"_{section}")
        return shape(row)

    def _roles(self, r: Any) -> dict[str, Any]:
        return {"name": r.name, "description": r.description, "permissions": r.permissions}

    def _centers(self, r: Any) -> dict[str, Any]:
        return {
            "name": r.name,
            "kind": r.kind,
            "params": r.params,
            "secrets": _secrets_out(r),
            "scan_interval_s": r.scan_interval_s,
        }

    def _protocol_plans(self, r: Any) -> dict[str, Any]:
        return {"name": r.name, "protocols": r.protocols}

    def _power_plans(self, r: Any) -> dict[str, Any]:
        return {"name": r.name, "rules": r.rules}

    _release_plans = _power_plans

    def _pools(self, r: Any) -> dict[str, Any]:
        provisioning = dict(r.provisioning or {})
        center_id = provisioning.pop("center_id", None)
        # A pool building in several centers names them, and their own parameters, by name.
        spread = [self._name("centers", c) for c in provisioning.pop("centers", None) or []]
        per = {
            self._name("centers", c): v
            for c, v in (provisioning.pop("center_parameters", None) or {}).items()
        }
        if provisioning:
            # Always written, as the document's model defaults them: a pool stored before
            # pools could span centers reads the same as one saved since.
            provisioning.update(centers=spread, center_parameters=per)
            provisioning.setdefault("placement", "fill_in_order")
            provisioning = {"center": self._name("centers", center_id), **provisioning}
        desktops = []
        for desktop_id in r.desktop_ids or []:
            center, name = self._desktops.get(desktop_id, (None, desktop_id))
            desktops.append({"center": self._name("centers", center), "name": name})
        return {
            "name": r.name,
            "description": r.description,
            "centers": [self._name("centers", c) for c in r.center_ids or []],
            "filters": r.filters,
            "desktops": desktops,
            "parent": self._name("pools", r.parent_pool_id),
            "provisioning": provisioning,
        }

    def _policies(self, r: Any) -> dict[str, Any]:
        entries = []
        for e in self._entries.get(r.name, []):
            entries.append(
                {
                    "pool": self._name("pools", e["pool_id"]),
                    "desktops": e["desktops"],
                    "assignment": e["assignment"],
                    "ordering": e["ordering"],
                    "backup_pool": self._name("pools", e["backup_pool_id"]),
                    "protocol_plan": self._name("protocol_plans", e["protocol_plan_id"]),
                    "power_plan": self._name("power_plans", e["power_plan_id"]),
                    "release_plan": self._name("release_plans", e["release_plan_id"]),
                    "skip_lost_agents": e["skip_lost_agents"],
                }
            )
        return {
            "name": r.name,
            "description": r.description,
            "max_desktops_per_user": r.max_desktops_per_user,
            "entries": entries,
        }

    def rule(self, r: Any) -> dict[str, Any]:
        return {
            "name": r.name,
            "position": r.position,
            "conditions": r.conditions,
            "policy": self._name("policies", r.policy_id),
            "role": r.role,
        }

    def _identity_sources(self, r: Any) -> dict[str, Any]:
        return {
            "name": r.name,
            "kind": r.kind,
            "domain": r.domain,
            "position": r.position,
            "enabled": r.enabled,
            "params": r.params,
            "secrets": _secrets_out(r),
            "second_factor": r.second_factor,
            "rules": [self.rule(rule) for rule in self.rules.get(r.name, [])],
        }

    def document(self) -> dict[str, Any]:
        return {
            section: [self.entry(section, name) for name in sorted(self.rows[section])]
            for section, _, _ in SECTIONS
        }

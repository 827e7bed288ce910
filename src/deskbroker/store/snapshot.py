"""Loads the configuration a login needs, for the per-node cache: all of it, or the
rows of the tenants whose configuration changed since the cache's version."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from deskbroker.store.claims import config_version
from deskbroker.store.tables import (
    AssignmentRuleRow,
    ConfigChange,
    CustomRole,
    IdentitySource,
    Policy,
    PolicyEntry,
    Pool,
    ProtocolPlan,
    Tenant,
)


@dataclass
class ConfigRows:
    """Plain copies of the rows, detached from any session."""

    version: int
    tenants: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)
    policies: list[dict[str, Any]] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    pools: list[dict[str, Any]] = field(default_factory=list)
    protocol_plans: list[dict[str, Any]] = field(default_factory=list)
    roles: list[dict[str, Any]] = field(default_factory=list)


def _rows(
    session: Session, model: Any, order: Any = None, where: Any = None
) -> list[dict[str, Any]]:
    query = select(model)
    if where is not None:
        query = query.where(where)
    if order is not None:
        query = query.order_by(*order)
    columns = [c.key for c in model.__table__.columns]
    return [{c: getattr(obj, c) for c in columns} for obj in session.scalars(query).all()]


def load(
    session: Session, tenant_ids: Collection[str] | None = None, version: int | None = None
) -> ConfigRows:
    """Everything the login path resolves without touching the database again: every
    tenant's, or only the rows of ``tenant_ids`` (with ``version``, read by the caller in
    this session before it asked which tenants changed)."""
    ids = list(tenant_ids) if tenant_ids is not None else None

    def of(model: Any) -> Any:
        if ids is None:
            return None
        return (model.id if model is Tenant else model.tenant_id).in_(ids)

    entries_of = None
    if ids is not None:
        entries_of = PolicyEntry.policy_id.in_(select(Policy.id).where(Policy.tenant_id.in_(ids)))
    return ConfigRows(
        version=config_version(session) if version is None else version,
        tenants=_rows(session, Tenant, where=of(Tenant)),
        sources=_rows(
            session,
            IdentitySource,
            (IdentitySource.position, IdentitySource.name),
            of(IdentitySource),
        ),
        rules=_rows(
            session,
            AssignmentRuleRow,
            (AssignmentRuleRow.position, AssignmentRuleRow.id),
            of(AssignmentRuleRow),
        ),
        policies=_rows(session, Policy, where=of(Policy)),
        entries=_rows(session, PolicyEntry, (PolicyEntry.position, PolicyEntry.id), entries_of),
        pools=_rows(session, Pool, where=of(Pool)),
        protocol_plans=_rows(session, ProtocolPlan, where=of(ProtocolPlan)),
        roles=_rows(session, CustomRole, where=of(CustomRole)),
    )


def changed_tenants(session: Session, since: int, until: int) -> set[str] | None:
    """The tenants whose configuration versions ``since`` (exclusive) to ``until``
    (inclusive) changed; None when one of them may have changed any tenant's, or is
    not on record (pruned, or written by an older node): then reload everything."""
    if until <= since:
        return set()
    rows = session.execute(
        select(ConfigChange.tenant_id).where(
            ConfigChange.version > since, ConfigChange.version <= until
        )
    ).all()
    if len(rows) != until - since or any(tenant_id is None for (tenant_id,) in rows):
        return None
    return {str(tenant_id) for (tenant_id,) in rows}

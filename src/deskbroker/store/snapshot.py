"""Loads the configuration a login needs, for the per-node cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from deskbroker.store.claims import config_version
from deskbroker.store.tables import (
    AssignmentRuleRow,
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


def _rows(session: Session, model: Any, order: Any = None) -> list[dict[str, Any]]:
    query = select(model)
    if order is not None:
        query = query.order_by(*order)
    columns = [c.key for c in model.__table__.columns]
    return [{c: getattr(obj, c) for c in columns} for obj in session.scalars(query).all()]


def load(session: Session) -> ConfigRows:
    """Everything the login path resolves without touching the database again."""
    return ConfigRows(
        version=config_version(session),
        tenants=_rows(session, Tenant),
        sources=_rows(session, IdentitySource, (IdentitySource.position, IdentitySource.name)),
        rules=_rows(session, AssignmentRuleRow, (AssignmentRuleRow.position, AssignmentRuleRow.id)),
        policies=_rows(session, Policy),
        entries=_rows(session, PolicyEntry, (PolicyEntry.position, PolicyEntry.id)),
        pools=_rows(session, Pool),
        protocol_plans=_rows(session, ProtocolPlan),
        roles=_rows(session, CustomRole),
    )

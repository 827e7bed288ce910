"""The reads behind configuration as code (``services/config_code.py``): every object of
one kind a tenant has, in a stable order, and its desktops by name."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from deskbroker.store.tables import AssignmentRuleRow, Desktop


def tenant_rows(session: Session, model: type[Any], tenant_id: str) -> list[Any]:
    """Every row of ``model`` in the tenant, by name (then id, for a stable order)."""
    query = select(model).where(model.tenant_id == tenant_id).order_by(model.name, model.id)
    return list(session.scalars(query).all())


def source_rules(session: Session, source_id: str) -> list[AssignmentRuleRow]:
    """An identity source's assignment rules in the order a login tries them."""
    query = (
        select(AssignmentRuleRow)
        .where(AssignmentRuleRow.identity_source_id == source_id)
        .order_by(AssignmentRuleRow.position, AssignmentRuleRow.name, AssignmentRuleRow.created_at)
        .order_by(AssignmentRuleRow.id)
    )
    return list(session.scalars(query).all())


def desktop_names(
    session: Session, tenant_id: str, ids: Collection[str]
) -> dict[str, tuple[str, str]]:
    """The tenant's desktops among ``ids``: id -> (center id, name)."""
    if not ids:
        return {}
    rows = session.execute(
        select(Desktop.id, Desktop.center_id, Desktop.name).where(
            Desktop.tenant_id == tenant_id, Desktop.id.in_(list(ids))
        )
    ).all()
    return {r.id: (r.center_id, r.name) for r in rows}


def desktops_named(
    session: Session, tenant_id: str, center_ids: Collection[str]
) -> dict[tuple[str, str], str]:
    """The tenant's desktops of these centers: (center id, name) -> id (the first made,
    where a center has two of one name)."""
    if not center_ids:
        return {}
    rows = session.execute(
        select(Desktop.id, Desktop.center_id, Desktop.name)
        .where(Desktop.tenant_id == tenant_id, Desktop.center_id.in_(list(center_ids)))
        .order_by(Desktop.created_at.desc(), Desktop.id.desc())
    ).all()
    return {(r.center_id, r.name): r.id for r in rows}

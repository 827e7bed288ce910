"""The reads of the stronger-account rule (``services/standing.py``): who signs in
through an identity source, which rules a source or a policy has, and which policies
a plan, pool or center reaches."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from deskbroker.domain.permissions import BuiltinRole
from deskbroker.store.tables import AssignmentRuleRow, PolicyEntry, Pool, User

# The policy entry columns through which a plan reaches a policy, by the plan's kind.
PLAN_COLUMNS = {
    "protocol": PolicyEntry.protocol_plan_id,
    "power": PolicyEntry.power_plan_id,
    "release": PolicyEntry.release_plan_id,
}


def rule_columns(row: AssignmentRuleRow) -> dict[str, Any]:
    """A stored rule as a dict of its columns (what the domain's rule is built from)."""
    return {c.key: getattr(row, c.key) for c in AssignmentRuleRow.__table__.columns}


def source_roles(session: Session, source_id: str) -> set[str]:
    """Every role a user of the source holds or one of its rules grants. Cheap: two
    DISTINCT reads, not a walk over users."""
    users = session.scalars(
        select(User.role).where(User.identity_source_id == source_id).distinct()
    )
    rules = session.scalars(
        select(AssignmentRuleRow.role)
        .where(AssignmentRuleRow.identity_source_id == source_id)
        .distinct()
    )
    return set(users) | set(rules)


def source_rules(session: Session, source_id: str) -> list[AssignmentRuleRow]:
    """The assignment rules of an identity source."""
    return list(
        session.scalars(
            select(AssignmentRuleRow).where(AssignmentRuleRow.identity_source_id == source_id)
        ).all()
    )


def staff(session: Session, source_id: str) -> list[User]:
    """The users of a source whose stored role is more than ``user``."""
    return list(
        session.scalars(
            select(User).where(
                User.identity_source_id == source_id, User.role != BuiltinRole.USER.value
            )
        ).all()
    )


def policy_rules(session: Session, policy_ids: Collection[str]) -> list[AssignmentRuleRow]:
    """The assignment rules that hand out any of these policies."""
    return list(
        session.scalars(
            select(AssignmentRuleRow).where(AssignmentRuleRow.policy_id.in_(policy_ids))
        ).all()
    )


def policies_with_plan(session: Session, kind: str, plan_id: str) -> set[str]:
    """The policies one of whose entries uses this plan (``kind``: protocol, power,
    release)."""
    column = PLAN_COLUMNS[kind]
    return set(session.scalars(select(PolicyEntry.policy_id).where(column == plan_id)))


def policies_with_pools(session: Session, pool_ids: Collection[str]) -> set[str]:
    """The policies that offer any of these pools, as the pool or as the backup."""
    return set(
        session.scalars(
            select(PolicyEntry.policy_id).where(
                or_(PolicyEntry.pool_id.in_(pool_ids), PolicyEntry.backup_pool_id.in_(pool_ids))
            )
        )
    )


def tenant_pools(session: Session, tenant_id: str) -> list[tuple[str, list[Any], str | None]]:
    """Each pool of the tenant as (id, center ids, parent pool id): a handful of rows."""
    rows = session.execute(
        select(Pool.id, Pool.center_ids, Pool.parent_pool_id).where(Pool.tenant_id == tenant_id)
    ).all()
    return [(str(pid), list(centers or []), parent) for pid, centers, parent in rows]

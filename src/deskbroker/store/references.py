"""What still refers to a catalog object: the reads behind "you cannot delete this, X
still uses it" and behind "the object you name does not exist"."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from deskbroker.store.tables import (
    AssignmentRuleRow,
    Center,
    Desktop,
    IdentitySource,
    Policy,
    PolicyEntry,
    Pool,
    PowerPlan,
    ProtocolPlan,
    ReleasePlan,
    User,
    Webhook,
)

# What a tenant owns, in the order a delete names what is left.
_TENANT_OWNED: tuple[tuple[Any, str], ...] = (
    (Center, "centers"),
    (Pool, "pools"),
    (Policy, "policies"),
    (ProtocolPlan, "protocol plans"),
    (PowerPlan, "power plans"),
    (ReleasePlan, "release plans"),
    (User, "users"),
    (IdentitySource, "identity sources"),
    (Webhook, "webhooks"),
)

# The policy entry column that refers to each kind of plan.
_PLAN_COLUMNS = {
    "protocol": PolicyEntry.protocol_plan_id,
    "power": PolicyEntry.power_plan_id,
    "release": PolicyEntry.release_plan_id,
}


def tenant_still_owns(session: Session, tenant_id: str) -> str | None:
    """The first kind of object the tenant still owns ("centers", "users"...), or None;
    one short read per kind until one is found."""
    for model, label in _TENANT_OWNED:
        if session.scalars(select(model.id).where(model.tenant_id == tenant_id).limit(1)).first():
            return label
    return None


def assigned_desktop_of_center(session: Session, center_id: str) -> str | None:
    """The name of one of the center's desktops that a user holds, or None; the center's
    desktops locked first (in id order) until the unit ends, so no claim gives one of
    them to a user between this answer and the delete that relies on it (a claim skips
    a locked row; on PostgreSQL a plain read would not see a claim committed after it)."""
    session.execute(
        select(Desktop.id)
        .where(Desktop.center_id == center_id)
        .order_by(Desktop.id)
        .with_for_update()
    ).all()
    return session.scalars(
        select(Desktop.name)
        .where(Desktop.center_id == center_id, Desktop.assigned_user_id.is_not(None))
        .limit(1)
    ).first()


def tenant_pools(session: Session, tenant_id: str) -> list[Pool]:
    """Every pool of the tenant."""
    return list(session.scalars(select(Pool).where(Pool.tenant_id == tenant_id)))


def delete_desktops_of_center(session: Session, center_id: str) -> None:
    """Forget the center's desktops (row by row: what hangs off a desktop goes too)."""
    for desktop in session.scalars(select(Desktop).where(Desktop.center_id == center_id)).all():
        session.delete(desktop)
    session.flush()


def tenant_desktop_ids(session: Session, tenant_id: str, ids: Collection[str]) -> set[str]:
    """Which of ``ids`` are the tenant's desktops."""
    return set(
        session.scalars(
            select(Desktop.id).where(Desktop.id.in_(list(ids)), Desktop.tenant_id == tenant_id)
        ).all()
    )


def pool_parents(session: Session, tenant_id: str) -> dict[str, str | None]:
    """Each of the tenant's pools and the pool it is nested in (None: top level)."""
    rows = session.execute(select(Pool.id, Pool.parent_pool_id).where(Pool.tenant_id == tenant_id))
    return {pool_id: parent for pool_id, parent in rows.all()}


def policies_using_pool(session: Session, pool_id: str) -> list[str]:
    """The names of the policies that offer the pool, or fall back to it."""
    uses = session.scalars(
        select(PolicyEntry.policy_id).where(
            (PolicyEntry.pool_id == pool_id) | (PolicyEntry.backup_pool_id == pool_id)
        )
    ).all()
    if not uses:
        return []
    return list(session.scalars(select(Policy.name).where(Policy.id.in_(uses))).all())


def sub_pool_of(session: Session, pool_id: str) -> str | None:
    """The name of one pool nested in the pool, or None."""
    return session.scalars(select(Pool.name).where(Pool.parent_pool_id == pool_id)).first()


def assigned_desktop_of_pool(session: Session, pool_id: str) -> str | None:
    """The name of one desktop a user holds from the pool, or None."""
    return session.scalars(
        select(Desktop.name).where(Desktop.assigned_pool_id == pool_id).limit(1)
    ).first()


def assigned_desktops_of_pool(session: Session, pool_id: str) -> list[tuple[str, str, str]]:
    """Every desktop a user holds from the pool: (desktop id, desktop name, user id)."""
    rows = session.execute(
        select(Desktop.id, Desktop.name, Desktop.assigned_user_id)
        .where(Desktop.assigned_pool_id == pool_id, Desktop.assigned_user_id.is_not(None))
        .order_by(Desktop.name)
    ).all()
    return [(str(i), str(n), str(u)) for i, n, u in rows]


def policy_using_plan(session: Session, kind: str, plan_id: str) -> str | None:
    """The name of one policy whose entries use the plan (``kind``: protocol, power or
    release), or None."""
    return session.scalars(
        select(Policy.name)
        .join(PolicyEntry, PolicyEntry.policy_id == Policy.id)
        .where(_PLAN_COLUMNS[kind] == plan_id)
    ).first()


def rule_using_policy(session: Session, policy_id: str) -> str | None:
    """The name of one assignment rule that grants the policy ("" for an unnamed rule),
    or None."""
    return session.scalars(
        select(AssignmentRuleRow.name).where(AssignmentRuleRow.policy_id == policy_id)
    ).first()

"""The reads the admin API's checks make about users: who holds a role or a desktop,
who else answers to a name, which accounts a tenant has."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.orm import Session

from deskbroker.store.claims import folded_name
from deskbroker.store.tables import AssignmentRuleRow, Desktop, User


def user_of_source(session: Session, source_id: str) -> str | None:
    """The name of one user of the identity source, or None."""
    return session.scalars(
        select(User.username).where(User.identity_source_id == source_id).limit(1)
    ).first()


def same_name_elsewhere(
    session: Session, tenant_id: str, source_id: str | None, username: str
) -> list[User]:
    """The tenant's users of other sources whose name is ``username`` but for case."""
    return list(
        session.scalars(
            select(User).where(
                User.tenant_id == tenant_id,
                User.identity_source_id != source_id,
                folded_name(username),
            )
        ).all()
    )


def held_desktop(session: Session, user_id: str) -> str | None:
    """The name of one desktop the user holds, or None."""
    return session.scalars(
        select(Desktop.name).where(Desktop.assigned_user_id == user_id).limit(1)
    ).first()


def role_holder(session: Session, tenant_id: str, role: str) -> str | None:
    """The name of one user of the tenant whose role is ``role``, or None."""
    return session.scalars(
        select(User.username).where(User.tenant_id == tenant_id, User.role == role).limit(1)
    ).first()


def rule_granting(session: Session, tenant_id: str, role: str) -> str | None:
    """The name of one assignment rule of the tenant that grants ``role``, or None."""
    return session.scalars(
        select(AssignmentRuleRow.name)
        .where(AssignmentRuleRow.tenant_id == tenant_id, AssignmentRuleRow.role == role)
        .limit(1)
    ).first()


def usernames(session: Session, tenant_ids: Collection[str]) -> list[tuple[str, str]]:
    """Every user of these tenants as (tenant id, username)."""
    rows = session.execute(
        select(User.tenant_id, User.username).where(User.tenant_id.in_(list(tenant_ids)))
    ).all()
    return [(str(t), str(name)) for t, name in rows]

"""The reads of the stronger-account rule (``services/standing.py``): who signs in
through an identity source, which rules a source or a policy has, and which policies
a plan, pool or center reaches."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from deskbroker.domain.permissions import BuiltinRole
from deskbroker.store.membership import build_centers
from deskbroker.store.tables import (
    AssignmentRuleRow,
    Desktop,
    PolicyEntry,
    Pool,
    PoolMember,
    User,
)

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


def nesting_below(session: Session, tenant_id: str, pool_ids: Collection[str]) -> dict[str, str]:
    """The parent links (child id -> parent id) of the tenant's pools nested, at any
    depth, under any of ``pool_ids``: one read of children per level of nesting, not of
    every pool of the tenant (for each pool of a batch, that made the batch quadratic).
    A nesting loop (refused when written) ends the walk: each round adds new links."""
    links: dict[str, str] = {}
    frontier = set(pool_ids)
    while frontier:
        rows = session.execute(
            select(Pool.id, Pool.parent_pool_id).where(
                Pool.tenant_id == tenant_id, Pool.parent_pool_id.in_(sorted(frontier))
            )
        ).all()
        new = {str(child): str(parent) for child, parent in rows if str(child) not in links}
        links.update(new)
        frontier = set(new)
    return links


def pools_holding(session: Session, desktop_ids: Collection[str]) -> set[str]:
    """The pools whose members include any of these desktops now."""
    if not desktop_ids:
        return set()
    return set(
        session.scalars(
            select(PoolMember.pool_id).where(PoolMember.desktop_id.in_(desktop_ids)).distinct()
        )
    )


def center_desktops(session: Session, center_id: str) -> set[str]:
    """The ids of the center's desktops."""
    return set(session.scalars(select(Desktop.id).where(Desktop.center_id == center_id)))


def pools_of_center(session: Session, tenant_id: str, center_id: str) -> set[str]:
    """The pools that can hold a desktop of the center: those naming it among their
    centers or their build centers, those naming one of its desktops, and those holding
    one now (a pool of filters only takes any center's desktops)."""
    desktops = center_desktops(session, center_id)
    rows = session.execute(
        select(Pool.id, Pool.center_ids, Pool.desktop_ids, Pool.provisioning).where(
            Pool.tenant_id == tenant_id
        )
    ).all()
    # By a join, not the ids: a center may have thousands of desktops.
    found = set(
        session.scalars(
            select(PoolMember.pool_id)
            .join(Desktop, Desktop.id == PoolMember.desktop_id)
            .where(Desktop.center_id == center_id)
            .distinct()
        )
    )
    for pid, centers, named, provisioning in rows:
        takes = set(centers or []) | build_centers(centers, provisioning)
        if center_id in takes or desktops & set(named or []):
            found.add(str(pid))
    return found


def pools_of_desktop(session: Session, desktop: Desktop) -> set[str]:
    """The pools that hold the desktop now or name it in their list."""
    named = session.execute(
        select(Pool.id, Pool.desktop_ids).where(Pool.tenant_id == desktop.tenant_id)
    ).all()
    found = pools_holding(session, [desktop.id])
    found |= {str(pid) for pid, ids in named if desktop.id in (ids or [])}
    return found


def holder_roles(session: Session, *, desktop_id: str = "", center_id: str = "") -> dict[str, str]:
    """The staff (role above ``user``) holding the desktop, or a desktop of the center:
    username -> role."""
    where = Desktop.id == desktop_id if desktop_id else Desktop.center_id == center_id
    rows = session.execute(
        select(User.username, User.role)
        .join(Desktop, Desktop.assigned_user_id == User.id)
        .where(where, User.role != BuiltinRole.USER.value)
        .distinct()
    ).all()
    return {str(name): str(role) for name, role in rows}


def people_on(session: Session, desktop_id: str) -> list[User]:
    """The broker's users a desktop stands for: its holder. Not the users an agent names
    in its sessions: any tenant administrator mints a desktop's agent token, and whoever
    held the desktop may have read it, so a session said to be a global administrator's
    would shield the desktop from the helpdesk. The holder is the broker's own record: a
    rogue login makes only a plain user the holder (``services.standing.rogue_refusal``)."""
    holder = select(Desktop.assigned_user_id).where(Desktop.id == desktop_id)
    return list(session.scalars(select(User).where(User.id.in_(holder))).all())

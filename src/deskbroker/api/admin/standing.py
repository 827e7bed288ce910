"""The stronger-account rule for identity sources and assignment rules.

Whoever controls a source (its servers, its second factor, whether it is enabled) or a
rule (which policy and desktops a user gets) controls the accounts that sign in through
it. So nobody may create, change or delete a source or rule through which an account
stronger than themselves signs in: a tenant administrator cannot point the global
administrators' source at a server of their own, switch its second factor off, or hand
a global administrator a desktop they watch. Users get the same protection one by one
in ``identity.may_manage``.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from deskbroker.api.permissions import catalog
from deskbroker.domain.permissions import BuiltinRole, Permissions
from deskbroker.domain.rules import AssignmentRule, Identity
from deskbroker.errors import Forbidden, InvalidInput
from deskbroker.security import TokenClaims
from deskbroker.services import access
from deskbroker.services.config_cache import rule_from_row
from deskbroker.store.tables import (
    AssignmentRuleRow,
    Center,
    IdentitySource,
    Policy,
    PolicyEntry,
    Pool,
    PowerPlan,
    ProtocolPlan,
    ReleasePlan,
    User,
)


def _stronger(session: Session, tenant_id: str, role: str) -> bool:
    """Whether an account of ``role`` may do something the actor may not."""
    if role == BuiltinRole.USER.value:
        return False
    actor: TokenClaims = session.info["actor"]
    if role == BuiltinRole.GLOBAL_ADMIN.value:
        # A scoped API token of a global administrator was meant to do less.
        return actor.role != BuiltinRole.GLOBAL_ADMIN.value or actor.scopes is not None
    try:
        grants = access.known_role(session, tenant_id, role, lambda _: True)
    except InvalidInput:
        return True  # a role this broker cannot read: fail closed
    held: Permissions = session.info["actor_permissions"]
    return bool(grants.within(held, catalog()))


def _refuse(role: str, what: str) -> Forbidden:
    if role == BuiltinRole.GLOBAL_ADMIN.value:
        return Forbidden(f"only a global administrator can {what}")
    return Forbidden(f"you cannot {what}: its role {role} allows more than yours")


def check_source(session: Session, source: IdentitySource, what: str) -> None:
    """Refuse to ``what`` (change, delete) a source whose users, or whose rules' grants,
    are stronger than the actor. Cheap: two DISTINCT reads, not a walk over users."""
    roles = set(
        session.scalars(select(User.role).where(User.identity_source_id == source.id).distinct())
    ) | set(
        session.scalars(
            select(AssignmentRuleRow.role)
            .where(AssignmentRuleRow.identity_source_id == source.id)
            .distinct()
        )
    )
    for role in sorted(roles):
        if _stronger(session, source.tenant_id, role):
            raise _refuse(
                role,
                f"{what} identity source {source.name}: accounts of role {role} sign in through it",
            )


def _rule(columns: dict[str, Any]) -> AssignmentRule:
    # Conservative: a time window, client network or OU is chosen by the login, so it is
    # taken as matching.
    rule = rule_from_row({"id": columns.get("id") or "new", **columns})
    return replace(rule, window=None, client_cidr=None, ou=None)


def _matches(rule: AssignmentRule, user: User) -> bool:
    who = Identity(
        username=user.username,
        groups=frozenset(str(g) for g in user.groups or ()),
        attributes={str(k): str(v) for k, v in (user.attributes or {}).items()},
    )
    return rule.matches(who, None, datetime.now(UTC))


def check_rule(
    session: Session, tenant_id: str, source_id: str, versions: list[dict[str, Any]], what: str
) -> None:
    """Refuse to ``what`` a rule (each of its ``versions``: as stored, as it would be)
    when a user stronger than the actor signs in through it, or when the source's other
    rules make accounts stronger than the actor (rule order decides which one applies)."""
    for version in versions:
        role = version.get("role") or BuiltinRole.USER.value
        if _stronger(session, tenant_id, role):
            raise _refuse(role, f"{what} a rule that grants the role {role}")
    others = session.scalars(
        select(AssignmentRuleRow).where(AssignmentRuleRow.identity_source_id == source_id)
    ).all()
    for row in others:
        if row.id not in {v.get("id") for v in versions} and _stronger(
            session, tenant_id, row.role
        ):
            raise _refuse(
                row.role,
                f"{what} a rule of this identity source: its rule {row.name or row.id} "
                f"makes accounts of role {row.role}, and rule order decides which one applies",
            )
    staff = session.scalars(
        select(User).where(
            User.identity_source_id == source_id, User.role != BuiltinRole.USER.value
        )
    ).all()
    rules = [_rule(v) for v in versions]
    for user in staff:
        if _stronger(session, tenant_id, user.role) and any(_matches(r, user) for r in rules):
            raise _refuse(
                user.role,
                f"{what} this rule: {user.username}, whose role is {user.role}, signs in "
                "through it",
            )


def rule_columns(row: AssignmentRuleRow) -> dict[str, Any]:
    """A stored rule as the column dict ``check_rule`` compares."""
    return {c.key: getattr(row, c.key) for c in AssignmentRuleRow.__table__.columns}


def _policies_reaching(session: Session, obj: Any) -> set[str]:
    """The policies through which ``obj`` (a policy, pool, center or plan) reaches the
    users those policies serve."""
    if isinstance(obj, Policy):
        return {obj.id}
    entries = select(PolicyEntry.policy_id)
    if isinstance(obj, ProtocolPlan):
        return set(session.scalars(entries.where(PolicyEntry.protocol_plan_id == obj.id)))
    if isinstance(obj, PowerPlan):
        return set(session.scalars(entries.where(PolicyEntry.power_plan_id == obj.id)))
    if isinstance(obj, ReleasePlan):
        return set(session.scalars(entries.where(PolicyEntry.release_plan_id == obj.id)))
    if isinstance(obj, Pool):
        pools = {obj.id}
    elif isinstance(obj, Center):
        # A pool names its centers in a list: read the tenant's pools (a handful).
        tenant_pools = session.execute(
            select(Pool.id, Pool.center_ids).where(Pool.tenant_id == obj.tenant_id)
        ).all()
        pools = {pid for pid, centers in tenant_pools if obj.id in (centers or [])}
    else:
        return set()
    if not pools:
        return set()
    return set(
        session.scalars(
            entries.where(
                or_(PolicyEntry.pool_id.in_(pools), PolicyEntry.backup_pool_id.in_(pools))
            )
        )
    )


def check_reach(session: Session, obj: Any, label: str, what: str) -> None:
    """Refuse to ``what`` (change, delete) a policy, pool, center or plan that an
    assignment rule reaches when that rule grants a role stronger than the actor's, or a
    user stronger than the actor signs in through it: whoever edits the pool or center
    a global administrator's desktops come from chooses the host they connect to."""
    policies = _policies_reaching(session, obj)
    if not policies:
        return
    rules = session.scalars(
        select(AssignmentRuleRow).where(AssignmentRuleRow.policy_id.in_(policies))
    ).all()
    name = getattr(obj, "name", obj.id)
    for row in rules:
        if _stronger(session, row.tenant_id, row.role):
            raise _refuse(
                row.role,
                f"{what} {label} {name}: the rule {row.name or row.id} gives it to accounts "
                f"of role {row.role}",
            )
        staff = session.scalars(
            select(User).where(
                User.identity_source_id == row.identity_source_id,
                User.role != BuiltinRole.USER.value,
            )
        ).all()
        rule = _rule(rule_columns(row))
        for user in staff:
            if _stronger(session, row.tenant_id, user.role) and _matches(rule, user):
                raise _refuse(
                    user.role,
                    f"{what} {label} {name}: {user.username}, whose role is {user.role}, "
                    f"gets desktops through it",
                )

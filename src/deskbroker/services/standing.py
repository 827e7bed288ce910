"""The stronger-account rule for users, identity sources and assignment rules.

Whoever controls a source (its servers, its second factor, whether it is enabled) or a
rule (which policy and desktops a user gets) controls the accounts that sign in through
it. So nobody may create, change or delete a source or rule through which an account
stronger than themselves signs in: a tenant administrator cannot point the global
administrators' source at a server of their own, switch its second factor off, or hand
a global administrator a desktop they watch. Users get the same protection one by one
(``may_manage``): no taking over a stronger account by resetting its password.

Each check runs inside the admin write's unit of work, which carries the actor
(``services/write_context.py``: ``WriteContext``, attached by ``attach_actor``).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from deskbroker.domain.membership import nested_under
from deskbroker.domain.permissions import BuiltinRole
from deskbroker.domain.rules import AssignmentRule, Identity
from deskbroker.errors import Forbidden, InvalidInput
from deskbroker.security import TokenClaims
from deskbroker.services import access, write_context
from deskbroker.services.config_cache import rule_from_row
from deskbroker.services.context import BrokerContext
from deskbroker.services.permission_catalog import catalog
from deskbroker.services.queues import settle
from deskbroker.store import standing as reads
from deskbroker.store.db import Unit
from deskbroker.store.repository import Repository
from deskbroker.store.standing import rule_columns
from deskbroker.store.tables import (
    Center,
    Desktop,
    IdentitySource,
    Policy,
    Pool,
    PowerPlan,
    ProtocolPlan,
    ReleasePlan,
)

Role = BuiltinRole

__all__ = [
    "check_desktop_reach",
    "check_reach",
    "check_rule",
    "check_source",
    "grant_role",
    "may_manage",
    "only_global_admin",
    "rogue_refusal",
    "rule_columns",
    "rule_roles",
]


def _stronger(session: Unit, tenant_id: str, role: str) -> bool:
    """Whether an account of ``role`` may do something the actor may not."""
    if role == Role.USER.value:
        return False
    actor = write_context.actor_of(session).actor
    if role == Role.GLOBAL_ADMIN.value:
        # A scoped API token of a global administrator was meant to do less.
        return actor.role != Role.GLOBAL_ADMIN.value or actor.scopes is not None
    try:
        grants = access.known_role(session, tenant_id, role, lambda _: True)
    except InvalidInput:
        return True  # a role this broker cannot read: fail closed
    held = write_context.actor_of(session).permissions
    return bool(grants.within(held, catalog()))


def _refuse(role: str, what: str) -> Forbidden:
    if role == Role.GLOBAL_ADMIN.value:
        return Forbidden(f"only a global administrator can {what}")
    return Forbidden(f"you cannot {what}: its role {role} allows more than yours")


def only_global_admin(session: Unit, what: str) -> None:
    """Refuse ``what`` to anyone but a global administrator signed in as a person."""
    found = write_context.actor_if_any(session)
    actor = found.actor if found is not None else None
    # A scoped API token of a global administrator is not one: it was meant to do less.
    if actor is None or actor.role != Role.GLOBAL_ADMIN.value:
        raise Forbidden(f"only a global administrator can {what}")
    if actor.scopes is not None:
        raise Forbidden(f"only a global administrator (not an API token) can {what}")


def grant_role(session: Unit, tenant: str, role: str, what: str) -> str:
    """Refuse a role unknown to the tenant, or one that allows more than the actor may do."""
    actor = write_context.actor_of(session).actor
    global_actor = actor.role == Role.GLOBAL_ADMIN and actor.scopes is None
    grants = access.known_role(
        session, tenant, role, lambda name: name != Role.GLOBAL_ADMIN or global_actor
    )
    held = write_context.actor_of(session).permissions
    access.check_grantable(held, grants, f"{what} the role {role}", catalog())
    return role


def _identity(username: str, groups: Any, attributes: Any) -> Identity:
    return Identity(
        username=username,
        groups=frozenset(str(g) for g in groups or ()),
        attributes={str(k): str(v) for k, v in (attributes or {}).items()},
    )


def _anywhere(columns: dict[str, Any]) -> AssignmentRule:
    # Conservative: a time window, client network or OU is chosen by the login, so it is
    # taken as matching.
    rule = rule_from_row({"id": columns.get("id") or "new", **columns})
    return replace(rule, window=None, client_cidr=None, ou=None)


def rule_roles(
    session: Unit, source_id: str, username: str, groups: Any, attributes: Any
) -> set[str]:
    """The roles the source's rules could give this user at a login. Conservative: the
    rules' time windows, client networks and OUs are taken as matching, since a login
    chooses them."""
    who = _identity(username, groups, attributes)
    found: set[str] = set()
    for row in reads.source_rules(session, source_id):
        rule = _anywhere(rule_columns(row))
        if rule.matches(who, None, datetime.now(UTC)) and rule.role != Role.USER:
            found.add(rule.role)
    return found


def may_manage(
    session: Unit, user: Any, what: str, *, groups: Any = None, attributes: Any = None
) -> None:
    """A user whose role allows more than the actor may not be changed by that actor: no
    taking over a stronger account by resetting its password. A user whose stored role is
    ``user`` is as strong as the roles the source's rules could give them at login."""
    roles = {user.role}
    if user.role == Role.USER:
        roles |= rule_roles(
            session,
            user.identity_source_id,
            user.username,
            user.groups if groups is None else groups,
            user.attributes if attributes is None else attributes,
        )
    held = write_context.actor_of(session).permissions
    for role in sorted(roles):
        if role == Role.GLOBAL_ADMIN.value:
            only_global_admin(session, f"{what} {user.username}, who can be global administrator")
            continue
        grants = access.known_role(session, user.tenant_id, role, lambda _: True)
        access.check_grantable(
            held, grants, f"{what} {user.username}, whose role can be {role}", catalog()
        )


def check_source(session: Unit, source: IdentitySource, what: str) -> None:
    """Refuse to ``what`` (change, delete) a source whose users, or whose rules' grants,
    are stronger than the actor."""
    for role in sorted(reads.source_roles(session, source.id)):
        if _stronger(session, source.tenant_id, role):
            raise _refuse(
                role,
                f"{what} identity source {source.name}: accounts of role {role} sign in through it",
            )


def _matches(rule: AssignmentRule, user: Any) -> bool:
    who = _identity(user.username, user.groups, user.attributes)
    return rule.matches(who, None, datetime.now(UTC))


def check_rule(
    session: Unit, tenant_id: str, source_id: str, versions: list[dict[str, Any]], what: str
) -> None:
    """Refuse to ``what`` a rule (each of its ``versions``: as stored, as it would be)
    when a user stronger than the actor signs in through it, or when the source's other
    rules make accounts stronger than the actor (rule order decides which one applies)."""
    for version in versions:
        role = version.get("role") or Role.USER.value
        if _stronger(session, tenant_id, role):
            raise _refuse(role, f"{what} a rule that grants the role {role}")
    for row in reads.source_rules(session, source_id):
        if row.id not in {v.get("id") for v in versions} and _stronger(
            session, tenant_id, row.role
        ):
            raise _refuse(
                row.role,
                f"{what} a rule of this identity source: its rule {row.name or row.id} "
                f"makes accounts of role {row.role}, and rule order decides which one applies",
            )
    rules = [_anywhere(v) for v in versions]
    for user in reads.staff(session, source_id):
        if _stronger(session, tenant_id, user.role) and any(_matches(r, user) for r in rules):
            raise _refuse(
                user.role,
                f"{what} this rule: {user.username}, whose role is {user.role}, signs in "
                "through it",
            )


_PLAN_KINDS: tuple[tuple[type[Any], str], ...] = (
    (ProtocolPlan, "protocol"),
    (PowerPlan, "power"),
    (ReleasePlan, "release"),
)


def _pools_reaching(session: Unit, obj: Pool | Center | Desktop) -> set[str]:
    """The pools a pool, center or desktop reaches: a center every pool that can hold
    its desktops (by its centers, build centers, desktop list or filters), a desktop
    every pool that holds or names it. A nested pool offers only its parent's members,
    so the pools nested under these are reached too."""
    if isinstance(obj, Pool):
        # By definitions alone (its own, and the parent links below), never its members.
        chosen = {obj.id}
    else:
        # Read from the members: as they are after pool writes the unit has batched
        # (``queues.pool_writes_batched``), not as they were before.
        settle(session)
        if isinstance(obj, Center):
            chosen = reads.pools_of_center(session, obj.tenant_id, obj.id)
        else:
            chosen = reads.pools_of_desktop(session, obj)
    if not chosen:
        return set()
    return nested_under(chosen, reads.nesting_below(session, obj.tenant_id, chosen))


def _policies_reaching(session: Unit, obj: Any) -> set[str]:
    """The policies through which ``obj`` (a policy, pool, center, desktop or plan)
    reaches the users those policies serve."""
    if isinstance(obj, Policy):
        return {obj.id}
    for model, kind in _PLAN_KINDS:
        if isinstance(obj, model):
            return reads.policies_with_plan(session, kind, obj.id)
    if not isinstance(obj, Pool | Center | Desktop):
        return set()
    reached = _pools_reaching(session, obj)
    if not reached:
        return set()
    return reads.policies_with_pools(session, reached)


def _check_holders(session: Unit, obj: Any, label: str, what: str) -> None:
    """Refuse when a desktop of ``obj`` (a center or desktop) is held by an account
    stronger than the actor: its address, ports and host keys are where that account
    connects, whichever way it got the desktop."""
    if isinstance(obj, Desktop):
        holders = reads.holder_roles(session, desktop_id=obj.id)
    elif isinstance(obj, Center):
        holders = reads.holder_roles(session, center_id=obj.id)
    else:
        return
    for username, role in sorted(holders.items()):
        if _stronger(session, obj.tenant_id, role):
            raise _refuse(
                role,
                f"{what} {label} {obj.name}: {username}, whose role is {role}, holds "
                f"{'it' if isinstance(obj, Desktop) else 'one of its desktops'}",
            )


def check_reach(session: Unit, obj: Any, label: str, what: str) -> None:
    """Refuse to ``what`` (change, delete, drain) a policy, pool, center, desktop or plan
    that an assignment rule reaches when that rule grants a role stronger than the
    actor's, or a user stronger than the actor signs in through it, or a center or
    desktop one of whose desktops such a user holds: whoever edits the pool, center or
    desktop a global administrator's desktops come from chooses the host they connect
    to."""
    _check_holders(session, obj, label, what)
    policies = _policies_reaching(session, obj)
    if not policies:
        return
    name = getattr(obj, "name", obj.id)
    for row in reads.policy_rules(session, policies):
        if _stronger(session, row.tenant_id, row.role):
            raise _refuse(
                row.role,
                f"{what} {label} {name}: the rule {row.name or row.id} gives it to accounts "
                f"of role {row.role}",
            )
        rule = _anywhere(rule_columns(row))
        for user in reads.staff(session, row.identity_source_id):
            if _stronger(session, row.tenant_id, user.role) and _matches(rule, user):
                raise _refuse(
                    user.role,
                    f"{what} {label} {name}: {user.username}, whose role is {user.role}, "
                    f"gets desktops through it",
                )


def rogue_refusal(session: Unit, user: Any) -> str | None:
    """Why a rogue login (one the broker did not hand out, reported by a desktop's
    agent) must not make ``user`` the desktop's holder, or None when it may. Whoever
    mints a desktop's agent token (any administrator of its tenant) chooses what it
    reports, so only plain users, whom every administrator may assign, get a desktop
    this way: never an account whose stored role, or a role its source's rules could
    give it, is more than ``user``."""
    roles = {user.role} | rule_roles(
        session, user.identity_source_id, user.username, user.groups, user.attributes
    )
    staff = sorted(roles - {Role.USER.value})
    if not staff:
        return None
    return (
        f"{user.username} can be {staff[0]}: a rogue login assigns desktops only to plain "
        "users; an administrator assigns this account a desktop through the admin API"
    )


def check_desktop_reach(
    ctx: BrokerContext, who: TokenClaims, desktop_id: str, tenant_scope: str | None, what: str
) -> None:
    """``check_reach`` on a desktop outside a catalog write: whoever mints its agent's
    token or enrolment secret speaks for its sessions (and cuts off its agent), so a
    stronger account's desktop is out of their reach. Another tenant's desktop is a
    404 like a made-up id."""
    with ctx.db.read() as session:
        desktop = Repository(Desktop, "desktop").get(session, desktop_id, tenant_scope)
        write_context.attach_actor(session, ctx, who)
        check_reach(session, desktop, "desktop", what)


def check_people_on(session: Unit, desktop_id: str, what: str) -> None:
    """Refuse ``what`` ("end the session on", "log off", "reboot"...) a desktop whose
    holder is stronger than the actor (``may_manage``, rule roles included; the actor
    attached to ``session``). The agent's word on who is in a session does not count
    (``store.standing.people_on``).
    Ending a stronger account's session hands its desktop to the release plan, and a
    message in its session speaks to it in the broker's name: both are acting on that
    account, as releasing its desktop is."""
    for user in reads.people_on(session, desktop_id):
        may_manage(session, user, what)

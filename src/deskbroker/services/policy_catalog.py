"""Policies and the protocol, power and release plans in the admin catalog: a policy's
entries refer only to its own tenant's pools and plans, and nothing is deleted that a
policy or an assignment rule still uses."""

from __future__ import annotations

from typing import Any

from deskbroker.errors import Conflict, InvalidInput
from deskbroker.services.catalog_crud import BeforeDelete, Resource, must_exist
from deskbroker.services.context import BrokerContext
from deskbroker.services.queues import keep_guard
from deskbroker.store import policy_entries, references
from deskbroker.store.db import Unit
from deskbroker.store.tables import Policy, Pool, PowerPlan, ProtocolPlan, ReleasePlan

# The key a policy's entries travel under from its prepare hook to its after-write hook
# (written once the policy has its id).
_PENDING_ENTRIES = "policy_entries"


def _plan_in_use(kind: str, label: str) -> BeforeDelete:
    def check(session: Unit, plan: Any) -> None:
        used = references.policy_using_plan(session, kind, plan.id)
        if used is not None:
            raise Conflict(f"{label} {plan.name} is used by policy {used}; change the policy first")

    return check


PROTOCOL_PLANS: Resource[ProtocolPlan] = Resource(
    model=ProtocolPlan,
    label="protocol plan",
    before_delete=_plan_in_use("protocol", "protocol plan"),
    reaches_users=True,
)
POWER_PLANS: Resource[PowerPlan] = Resource(
    model=PowerPlan,
    label="power plan",
    before_delete=_plan_in_use("power", "power plan"),
    reaches_users=True,
)
RELEASE_PLANS: Resource[ReleasePlan] = Resource(
    model=ReleasePlan,
    label="release plan",
    before_delete=_plan_in_use("release", "release plan"),
    reaches_users=True,
)


_ENTRY_REFS = (
    ("pool_id", Pool, "pool"),
    ("backup_pool_id", Pool, "backup pool"),
    ("protocol_plan_id", ProtocolPlan, "protocol plan"),
    ("power_plan_id", PowerPlan, "power plan"),
    ("release_plan_id", ReleasePlan, "release plan"),
)


def _prepare_policy(
    session: Unit, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
) -> dict[str, Any]:
    entries = data.pop("entries", None)
    if entries is not None:
        pools = [e["pool_id"] for e in entries]
        if len(pools) != len(set(pools)):
            raise InvalidInput("a pool may appear once in a policy")
        for entry in entries:
            for key, model, label in _ENTRY_REFS:
                must_exist(session, model, entry.get(key), tenant, label)
        session.info[_PENDING_ENTRIES] = entries
    return data


def _write_entries(session: Unit, ctx: BrokerContext, policy: Any) -> None:
    entries = session.info.pop(_PENDING_ENTRIES, None)
    if entries is None:
        return
    policy_entries.replace(session, policy.id, entries)
    # A policy a global administrator is offered may now offer another pool.
    keep_guard(session, policy.tenant_id)


def _policy_out(session: Unit, policy: Any) -> dict[str, Any]:
    out = {c.key: getattr(policy, c.key) for c in Policy.__table__.columns}
    out["entries"] = policy_entries.read(session, policy.id)
    return out


def _policy_in_use(session: Unit, policy: Any) -> None:
    rule = references.rule_using_policy(session, policy.id)
    if rule is not None:
        raise Conflict(f"policy {policy.name} is used by the assignment rule {rule or '(unnamed)'}")


POLICIES: Resource[Policy] = Resource(
    model=Policy,
    label="policy",
    prepare=_prepare_policy,
    after_write=_write_entries,
    to_read=_policy_out,
    before_delete=_policy_in_use,
    reaches_users=True,
    holds_membership=True,
)

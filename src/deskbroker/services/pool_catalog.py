"""Pools in the admin catalog: what keeps a pool valid (its centers, desktops and parent
exist in its tenant, no nesting cycle, provisioning parameters its center's driver
accepts, nothing deleted that a policy, a sub-pool or a user still needs), and what an
administrator reads of one: its status in numbers and words, its members, its queue."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from deskbroker.centers import registry
from deskbroker.domain.membership import creates_cycle
from deskbroker.domain.pool_status import status_counts, status_words
from deskbroker.domain.states import ACTIVE_SESSION_STATES
from deskbroker.errors import Conflict, InvalidInput
from deskbroker.services import pools as pool_service
from deskbroker.services.catalog_crud import Resource, must_exist
from deskbroker.services.context import BrokerContext
from deskbroker.services.queues import refresh_after_pool_write
from deskbroker.store import drain as drain_rows
from deskbroker.store import jobs, membership, pool_status, references
from deskbroker.store import quotas as tenant_quotas
from deskbroker.store.db import Unit
from deskbroker.store.repository import Repository
from deskbroker.store.tables import Center, Pool


def pools_resource(own_parameters: Collection[str]) -> Resource[Pool]:
    """The pools resource. ``own_parameters``: the provisioning parameters that are the
    broker's (a name template, user data...); any other is the provisioning center's,
    checked by its driver."""
    own_keys = frozenset(own_parameters)

    def prepare(
        session: Unit, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
    ) -> dict[str, Any]:
        return _prepare_pool(session, tenant, data, existing, own_keys)

    return Resource(
        model=Pool,
        label="pool",
        prepare=prepare,
        after_write=_pool_after,
        before_delete=_pool_going,
        reaches_users=True,
        holds_membership=True,
    )


def _prepare_pool(
    session: Unit, tenant: str, data: dict[str, Any], existing: Any, own_keys: frozenset[str]
) -> dict[str, Any]:
    for cid in data.get("center_ids") or []:
        must_exist(session, Center, cid, tenant, "center")
    provisioning = data.get("provisioning") or {}
    must_exist(session, Center, provisioning.get("center_id"), tenant, "provisioning center")
    ids = data.get("desktop_ids") or []
    if ids:
        found = references.tenant_desktop_ids(session, tenant, ids)
        missing = [i for i in ids if i not in found]
        if missing:
            raise InvalidInput(f"desktop {missing[0]} does not exist")
    parent = data.get("parent_pool_id")
    if parent is not None:
        must_exist(session, Pool, parent, tenant, "parent pool")
        if existing is not None:
            parents = references.pool_parents(session, tenant)
            if creates_cycle(existing.id, parent, parents):
                raise InvalidInput("a pool cannot be nested inside itself or its own sub-pool")
    if data.get("provisioning") is None:
        data.pop("provisioning", None)
    else:
        _check_center_parameters(session, data, existing, own_keys)
        if existing is not None:
            # New parameters may cure what made builds fail: try again at once.
            data.update(build_failures=0, builds_resume_at=None)
    return data


def _check_center_parameters(
    session: Unit, data: dict[str, Any], existing: Any, own_keys: frozenset[str]
) -> None:
    """Validate the center's part of the parameters with the provisioning center's
    driver (the one the engine builds on: the named center, else the pool's first)."""
    provisioning = data["provisioning"]
    parameters = dict(provisioning.get("parameters") or {})
    own = {k: v for k, v in parameters.items() if k in own_keys}
    theirs = {k: v for k, v in parameters.items() if k not in own}
    center_ids = data["center_ids"] if "center_ids" in data else getattr(existing, "center_ids", [])
    spread = list(provisioning.get("centers") or [])
    if spread:
        _check_spread(session, provisioning, spread, list(center_ids or []), own, theirs)
        return
    center_id = provisioning.get("center_id") or next(iter(center_ids or []), None)
    center = session.get(Center, center_id) if center_id else None
    if center is None:
        if theirs:
            raise InvalidInput(
                f"provisioning.parameters.{min(theirs)}: a center's parameter, and the pool "
                "has no center; give it one first"
            )
        return
    provisioning["parameters"] = {
        **own,
        **registry.validate_provision_params(center.kind, theirs),
    }


def _check_spread(
    session: Unit,
    provisioning: dict[str, Any],
    spread: list[str],
    center_ids: list[str],
    own: dict[str, Any],
    theirs: dict[str, Any],
) -> None:
    """A pool building in several centers: each is one of the pool's own centers (so of
    its tenant), and the shared parameters with that center's own must satisfy its
    driver; each center's validated set is stored as its ``center_parameters``."""
    per = dict(provisioning.get("center_parameters") or {})
    checked: dict[str, dict[str, Any]] = {}
    for index, cid in enumerate(spread):
        if cid not in center_ids:
            raise InvalidInput(
                f"provisioning.centers.{index}: {cid} is not one of the pool's center_ids"
            )
        center = session.get(Center, cid)
        if center is None:  # the pool's centers were checked in its tenant just before
            raise InvalidInput(f"provisioning.centers.{index}: center {cid} does not exist")
        extra = {k: v for k, v in (per.get(cid) or {}).items() if k not in own}
        try:
            checked[cid] = registry.validate_provision_params(center.kind, {**theirs, **extra})
        except InvalidInput as exc:
            raise InvalidInput(f"center {center.name}: {exc.detail}") from exc
    provisioning["parameters"] = {**own, **theirs}
    provisioning["center_parameters"] = checked


def _pool_after(session: Unit, ctx: BrokerContext, pool: Any) -> None:
    # What a pool names decides whether its guard holds (``membership.guard_changed``).
    membership.guard_changed(session, pool.tenant_id)
    # At once for one pool; once for all when the unit batches its pool writes.
    refresh_after_pool_write(session, pool.tenant_id)
    jobs.poke(session, jobs.JobKind.POOL_PROVISION, pool.id)


def _pool_going(session: Unit, pool: Any) -> None:
    """A pool still in use is refused; a deleted pool's unstarted builds are cancelled
    (in the same unit: no task outlives its pool without being told)."""
    _pool_in_use(session, pool)
    pool_service.cancel_builds_of_deleted(
        session, pool_id=pool.id, tenant_id=pool.tenant_id, name=pool.name
    )


def _pool_in_use(session: Unit, pool: Any) -> None:
    names = references.policies_using_pool(session, pool.id)
    if names:
        raise Conflict(
            f"pool {pool.name} is used by polic{'y' if len(names) == 1 else 'ies'} "
            f"{', '.join(sorted(names))}; remove it from them first"
        )
    child = references.sub_pool_of(session, pool.id)
    if child is not None:
        raise Conflict(f"pool {pool.name} has the sub-pool {child}; delete or move it first")
    held = references.assigned_desktop_of_pool(session, pool.id)
    if held is not None:
        raise Conflict(
            f"pool {pool.name} still has assigned desktops (e.g. {held}); release them first"
        )


# --- what an administrator reads of a pool --------------------------------------------
_POOLS: Repository[Pool] = Repository(Pool, "pool")


def status(ctx: BrokerContext, pool_id: str, tenant_id: str | None) -> dict[str, Any]:
    """The pool's status: counts in numbers, and one sentence in words. ``tenant_id``
    None: any tenant's pool (a global administrator)."""
    with ctx.db.read() as session:
        return _status(session, _POOLS.get(session, pool_id, tenant_id))


def _status(session: Unit, pool: Pool) -> dict[str, Any]:
    rows = pool_status.desktop_counts(session, pool.id)
    queued = pool_status.queue_length(session, pool.id)
    # "available" is the free desktops a login could be given: the claim's definition.
    free = pool_service.free_count(session, pool.id)
    tasks = pool_status.task_counts(session, pool.id)
    in_session = pool_status.desktops_in_session(
        session, pool.id, [s.value for s in ACTIVE_SESSION_STATES]
    )
    counts = status_counts(rows, free=free, queued=queued, tasks=tasks, in_session=in_session)
    # Out of the claim by a drain: every member of a drained pool, else the members
    # drained themselves or by their center.
    counts["drained"] = (
        counts["total"] if pool.drained_at else drain_rows.drained_members(session, pool.id)
    )
    quota = tenant_quotas.read(session, pool.tenant_id)
    used = None
    tenant_desktops = None
    if quota.desktops is not None:
        # The tenant's quota spans its pools: a full tenant explains a pool that stopped.
        used = tenant_quotas.desktops_used(session, pool.tenant_id)
        tenant_desktops = (used, quota.desktops)
    words = status_words(
        counts,
        build_failures=pool.build_failures,
        last_error=pool.last_error,
        tenant_desktops=tenant_desktops,
    )
    if pool.drained_at:
        words = f"drained: no login gets a desktop from it; {words}"
    elif counts["drained"]:
        words += f"; {counts['drained']} drained"
    return {
        "pool_id": pool.id,
        "name": pool.name,
        "counts": counts,
        "summary": words,
        "drained_at": pool.drained_at,
        "status": pool.status,
        "provisioning": pool.status_message,
        "last_error": pool.last_error,
        "build_failures": pool.build_failures,
        "builds_resume_at": pool.builds_resume_at,
        "tenant_desktops": {"limit": quota.desktops, "used": used},
    }


@dataclass(frozen=True)
class Member:
    id: str
    name: str
    power_state: str
    assigned_user_id: str | None


def members(ctx: BrokerContext, pool_id: str, tenant_id: str | None) -> list[Member]:
    """The pool's desktops by name."""
    with ctx.db.read() as session:
        pool = _POOLS.get(session, pool_id, tenant_id)
        return [Member(*row) for row in pool_status.members(session, pool.id)]


@dataclass(frozen=True)
class Waiting:
    position: int
    user_id: str
    username: str
    since: datetime


def queue(ctx: BrokerContext, pool_id: str, tenant_id: str | None) -> list[Waiting]:
    """Who waits for the pool, in the order they will be served."""
    with ctx.db.read() as session:
        pool = _POOLS.get(session, pool_id, tenant_id)
        rows = pool_status.queue(session, pool.id)
    return [Waiting(n + 1, u, name, since) for n, (u, name, since) in enumerate(rows)]


def check_definition(
    session: Unit, tenant: str, data: dict[str, Any], existing: Any, own_keys: frozenset[str]
) -> dict[str, Any]:
    """A pool definition checked as a create or an update would check it (references in
    the tenant, no nesting cycle, the center's parameters), without writing it: what the
    preview (``services.pool_preview``) needs to refuse exactly what saving would."""
    return _prepare_pool(session, tenant, data, existing, own_keys)

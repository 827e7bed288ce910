"""A pool's desktop upkeep settings (scheduled refresh or reboot, refresh on release),
and the release hook that takes a released desktop out of the claim for its refresh.
The engine carries the rebuilds out (``engine/rebuilds.py``)."""

from __future__ import annotations

from typing import Any

from deskbroker.domain.upkeep import RebuildReason, Upkeep
from deskbroker.security import TokenClaims
from deskbroker.services import standing, write_context
from deskbroker.services.catalog_crud import scope
from deskbroker.services.context import BrokerContext
from deskbroker.store import events, jobs
from deskbroker.store import rollouts as store
from deskbroker.store.db import Unit
from deskbroker.store.repository import Repository
from deskbroker.store.tables import Pool, PoolUpkeep, utcnow

_POOLS: Repository[Pool] = Repository(Pool, "pool")
_FIELDS = ("refresh_on_release", "scheduled_action", "scheduled_at", "window_minutes", "timezone")


def _answer(pool: Pool, row: PoolUpkeep | None) -> dict[str, Any]:
    settings = (
        Upkeep() if row is None else Upkeep.model_validate({f: getattr(row, f) for f in _FIELDS})
    )
    return {
        "pool_id": pool.id,
        **settings.model_dump(mode="json"),
        "last_scheduled_on": row.last_scheduled_on if row is not None else "",
    }


def read(ctx: BrokerContext, pool_id: str, who: TokenClaims) -> dict[str, Any]:
    """The pool's upkeep settings (the defaults when never set)."""
    with ctx.db.read() as session:
        pool = _POOLS.get(session, pool_id, scope(who))
        return _answer(pool, store.upkeep_of(session, pool.id))


def write(ctx: BrokerContext, pool_id: str, settings: Upkeep, who: TokenClaims) -> dict[str, Any]:
    """Replace the pool's upkeep settings; audited."""
    with ctx.db.write() as session:
        write_context.attach_actor(session, ctx, who)
        pool = _POOLS.get(session, pool_id, scope(who))
        standing.check_reach(session, pool, "pool", "change the upkeep of")
        row = store.upkeep_of(session, pool.id, lock=True)
        if row is None:
            row = PoolUpkeep(pool_id=pool.id, tenant_id=pool.tenant_id, last_scheduled_on="")
            session.add(row)
        for name, value in settings.model_dump(mode="json").items():
            setattr(row, name, value)
        row.updated_at = utcnow()
        events.append(
            session,
            "pool.upkeep",
            tenant_id=pool.tenant_id,
            actor=who.username,
            pool_id=pool.id,
            detail=settings.model_dump(mode="json"),
        )
        jobs.poke(session, jobs.JobKind.POOL_ROLLOUT, pool.id)
        session.flush()
        return _answer(pool, row)


def pool_image(session: Unit, pool: Pool) -> str:
    """The image a refresh rebuilds from: a rollout's (already the center's id), else
    the pool's image as written (the engine has the center name it)."""
    rollout = store.rollout_of(session, pool.id)
    if rollout is not None:  # it set the pool's image, and its center named the id
        return rollout.image_id
    return str((pool.provisioning.get("parameters") or {}).get("image") or "")


def after_release(session: Unit, *, desktop_id: str, tenant_id: str, pool_id: str) -> bool:
    """In the release's own unit of work: when the pool refreshes on release, take the
    desktop out of the claim (before the queue is served) for the engine to rebuild.
    Nothing when someone still has a session on it or the pool has no image."""
    upkeep = store.upkeep_of(session, pool_id)
    pool = session.get(Pool, pool_id)
    if upkeep is None or not upkeep.refresh_on_release or pool is None:
        return False
    image = pool_image(session, pool)
    if not image:
        return False
    taken = store.take_out(
        session,
        desktop_id,
        tenant_id=tenant_id,
        pool_id=pool_id,
        reason=RebuildReason.RELEASE.value,
        image_id=image,
        persistent_too=False,
        now=utcnow(),
    )
    if taken:
        jobs.poke(session, jobs.JobKind.POOL_ROLLOUT, pool_id)
    return taken

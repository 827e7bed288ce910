"""Rolling a pool onto a new image: start, pause, resume, roll back, and the progress
an administrator reads (the engine's side is ``engine/rollouts.py``).

Starting one sets the pool's image (new builds use it at once) and records the image
it had, so a roll back can aim at it again. The center is asked (to name the image's
id) before the unit of work opens; nothing is written if it does not have the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deskbroker.centers.base import Capability, CenterDriver, ImageInfo
from deskbroker.domain.provisioning import Provisioning
from deskbroker.domain.rollouts import (
    REPLACEABLE,
    DesktopView,
    Fate,
    Progress,
    RolloutStep,
    fate,
    move,
    words,
)
from deskbroker.domain.states import RolloutState
from deskbroker.errors import CenterError, Conflict, InvalidInput
from deskbroker.security import TokenClaims
from deskbroker.services import standing, write_context
from deskbroker.services.catalog_crud import scope
from deskbroker.services.context import BrokerContext
from deskbroker.store import events, jobs
from deskbroker.store import rollouts as store
from deskbroker.store.config_version import bump_config_version
from deskbroker.store.db import Unit
from deskbroker.store.repository import Repository
from deskbroker.store.tables import Center, Pool, PoolRollout

_POOLS: Repository[Pool] = Repository(Pool, "pool")


def view(desktop: store.RolloutDesktop) -> DesktopView:
    """A desktop as the rollout's rules read it."""
    return DesktopView(
        image=desktop.image,
        assigned=desktop.assigned,
        kind=desktop.kind,
        free=desktop.free,
        in_session=desktop.in_session,
        rebuilding=desktop.rebuild_reason is not None and not desktop.rebuild_failed,
        failed=desktop.rebuild_failed,
    )


def fates(rollout: PoolRollout, desktops: list[store.RolloutDesktop]) -> list[Fate]:
    """Each desktop's place in the rollout, in the order given."""
    return [
        fate(view(d), rollout.image_id, include_persistent=rollout.include_persistent)
        for d in desktops
    ]


def _answer(rollout: PoolRollout, desktops: list[store.RolloutDesktop]) -> dict[str, Any]:
    progress = Progress.of(fates(rollout, desktops))
    state = RolloutState(rollout.state)
    return {
        "pool_id": rollout.pool_id,
        "state": state.value,
        "image": rollout.image,
        "image_id": rollout.image_id,
        "previous_image": rollout.previous_image,
        "rolled_back": rollout.rolled_back,
        "include_persistent": rollout.include_persistent,
        "batch_size": rollout.batch_size,
        "total": progress.total,
        "on_image": progress.on_target,
        "rebuilding": progress.rebuilding,
        "to_rebuild": progress.to_rebuild,
        "waiting_for_users": progress.waiting_for_users,
        "persistent_kept": progress.persistent_kept,
        "failed": progress.failed,
        "not_ready": progress.not_ready,
        "summary": words(progress, state, rolled_back=rollout.rolled_back),
        "failures": [
            {"desktop_id": d.id, "name": d.name, "message": d.rebuild_message}
            for d in desktops
            if d.rebuild_failed
        ],
        "last_error": rollout.last_error,
        "started_by": rollout.started_by,
        "updated_at": rollout.updated_at.isoformat(),
    }


def _read(session: Unit, pool: Pool) -> dict[str, Any]:
    rollout = store.rollout_of(session, pool.id)
    if rollout is None:
        return _none(pool)
    return _answer(rollout, store.pool_desktops(session, pool.id, rollout.center_id))


def _none(pool: Pool) -> dict[str, Any]:
    """A pool that never had a rollout: nothing under way, said so."""
    zero = dict.fromkeys(
        ("total", "on_image", "rebuilding", "to_rebuild", "waiting_for_users"), 0
    ) | dict.fromkeys(("persistent_kept", "failed", "not_ready", "batch_size"), 0)
    return {
        "pool_id": pool.id,
        "state": "none",
        "image": str((pool.provisioning.get("parameters") or {}).get("image") or ""),
        "image_id": "",
        "previous_image": "",
        "rolled_back": False,
        "include_persistent": False,
        **zero,
        "summary": f"pool {pool.name} has had no rollout: start one with a new image",
        "failures": [],
        "last_error": "",
        "started_by": "",
        "updated_at": pool.updated_at.isoformat(),
    }


def status(ctx: BrokerContext, pool_id: str, who: TokenClaims) -> dict[str, Any]:
    """The pool's rollout in numbers and words (404 for another tenant's pool)."""
    with ctx.db.read() as session:
        return _read(session, _POOLS.get(session, pool_id, scope(who)))


@dataclass(frozen=True)
class RolloutRequest:
    image: str
    include_persistent: bool = False
    batch_size: int = 5


def _find_image(images: list[ImageInfo], ref: str, center: str) -> ImageInfo:
    found = [i for i in images if ref in (i.external_id, i.name)]
    if not found:
        raise InvalidInput(f"center {center} has no image {ref!r}", field="image")
    if len({i.external_id for i in found}) > 1:
        raise InvalidInput(
            f"{len(found)} images of center {center} are named {ref!r}: give its id",
            field="image",
        )
    return found[0]


def _center_of(session: Unit, pool: Pool) -> Center:
    center_id = Provisioning.from_stored(pool.provisioning).center_for(pool.center_ids)
    center = session.get(Center, center_id) if center_id else None
    if center is None or center.tenant_id != pool.tenant_id:
        raise Conflict(
            f"pool {pool.name} builds in no center: a rollout rebuilds desktops in the "
            "center the pool provisions from"
        )
    return center


def _rebuilder(ctx: BrokerContext, center: Center) -> CenterDriver:
    driver = ctx.drivers.get(center)
    if Capability.REBUILD not in driver.capabilities:
        raise Conflict(f"center {center.name} ({center.kind}) cannot rebuild desktops")
    if Capability.IMAGES not in driver.capabilities:
        raise Conflict(f"center {center.name} ({center.kind}) lists no images")
    return driver


def start(
    ctx: BrokerContext, pool_id: str, request: RolloutRequest, who: TokenClaims
) -> dict[str, Any]:
    """Aim the pool at ``request.image``: set it as the pool's image and roll it out."""
    with ctx.db.read() as session:
        pool = _POOLS.get(session, pool_id, scope(who))
        center = _center_of(session, pool)
        current = store.rollout_of(session, pool.id)
        if current is not None and RolloutState(current.state) not in REPLACEABLE:
            raise Conflict(
                f"pool {pool.name} is {current.state} onto image {current.image}: finish, "
                "resume or roll it back before starting another"
            )
        before = str((pool.provisioning.get("parameters") or {}).get("image") or "")
    driver = _rebuilder(ctx, center)
    try:
        # No unit of work is open (the center may be slow), and the wait counts
        # against the tenant's share of request threads, as its catalog's does.
        images = ctx.sources.tenant_call(
            center.tenant_id, "list the center's images", driver.images
        )
    except CenterError as exc:
        raise CenterError(f"center {center.name} did not list its images: {exc.detail}") from exc
    target = _find_image(images, request.image, center.name)
    previous = next((i for i in images if before in (i.external_id, i.name)), None)
    with ctx.db.write() as session:
        write_context.attach_actor(session, ctx, who)
        pool = _POOLS.get(session, pool_id, scope(who))
        standing.check_reach(session, pool, "pool", "roll out an image to")
        rollout = store.rollout_of(session, pool.id, lock=True)
        if rollout is not None and RolloutState(rollout.state) not in REPLACEABLE:
            raise Conflict(f"pool {pool.name} is {rollout.state}: another rollout started")
        if rollout is None:
            rollout = PoolRollout(tenant_id=pool.tenant_id, pool_id=pool.id)
            session.add(rollout)
        rollout.center_id = center.id
        rollout.state = RolloutState.ROLLING.value
        rollout.image, rollout.image_id = request.image, target.external_id
        rollout.previous_image = before
        rollout.previous_image_id = previous.external_id if previous else ""
        rollout.rolled_back = False
        rollout.include_persistent = request.include_persistent
        rollout.batch_size = request.batch_size
        rollout.last_error = ""
        rollout.started_by = who.username
        _set_pool_image(session, pool, request.image)
        store.forget_failures(session, pool.id)
        events.append(
            session,
            "rollout.start",
            tenant_id=pool.tenant_id,
            actor=who.username,
            pool_id=pool.id,
            detail={"image": request.image, "previous_image": before},
        )
        jobs.poke(session, jobs.JobKind.POOL_ROLLOUT, pool.id)
        session.flush()
        return _read(session, pool)


def _set_pool_image(session: Unit, pool: Pool, image: str) -> None:
    """New builds of the pool use ``image`` from now on."""
    provisioning = dict(pool.provisioning or {})
    parameters = dict(provisioning.get("parameters") or {})
    parameters["image"] = image
    provisioning["parameters"] = parameters
    pool.provisioning = provisioning
    bump_config_version(session, pool.tenant_id)


def step(ctx: BrokerContext, pool_id: str, what: RolloutStep, who: TokenClaims) -> dict[str, Any]:
    """Pause, resume or roll back the pool's rollout; a roll back aims at the image the
    pool had before (and back again, if asked twice)."""
    with ctx.db.write() as session:
        write_context.attach_actor(session, ctx, who)
        pool = _POOLS.get(session, pool_id, scope(who))
        standing.check_reach(session, pool, "pool", f"{what.value.replace('_', ' ')} a rollout of")
        rollout = store.rollout_of(session, pool.id, lock=True)
        if rollout is None:
            raise Conflict(f"pool {pool.name} has no rollout to {what.value.replace('_', ' ')}")
        if what is RolloutStep.ROLL_BACK and not rollout.previous_image_id:
            raise Conflict(
                f"pool {pool.name} had no image its center still has before this rollout: "
                "there is nothing to roll back to; start a rollout to the image you want"
            )
        rollout.state = move(rollout.state, what, subject=f"pool {pool.name}").value
        if what is RolloutStep.ROLL_BACK:
            rollout.image, rollout.previous_image = rollout.previous_image, rollout.image
            rollout.image_id, rollout.previous_image_id = (
                rollout.previous_image_id,
                rollout.image_id,
            )
            rollout.rolled_back = not rollout.rolled_back
            _set_pool_image(session, pool, rollout.image)
        if what in (RolloutStep.RESUME, RolloutStep.ROLL_BACK):
            rollout.last_error = ""
            store.forget_failures(session, pool.id)
        events.append(
            session,
            f"rollout.{what.value}",
            tenant_id=pool.tenant_id,
            actor=who.username,
            pool_id=pool.id,
            detail={"image": rollout.image},
        )
        jobs.poke(session, jobs.JobKind.POOL_ROLLOUT, pool.id)
        session.flush()
        return _read(session, pool)

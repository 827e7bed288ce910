"""A pool's rollout onto a new image (start, read its progress, pause, resume, roll
back; ``pools:rollout``) and its desktop upkeep (scheduled refresh or reboot, refresh on
release; ``pools:upkeep``). Reading either needs ``pools:read``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from deskbroker.api.deps import AdminReader, AdminWriter, Ctx
from deskbroker.api.schemas import Body
from deskbroker.domain.rollouts import RolloutStep
from deskbroker.domain.upkeep import Upkeep
from deskbroker.services import pool_upkeep, rollouts

_WRITE = {"x-permission": "pools:rollout"}


class RolloutIn(Body):
    image: str = Field(
        min_length=1, max_length=255, description="the image (or snapshot) by id or name"
    )
    include_persistent: bool = Field(
        default=False,
        description="also rebuild persistent desktops (while nobody is in them); their "
        "users' data volumes stay attached",
    )
    batch_size: int = Field(default=5, ge=1, le=100, description="rebuilds under way at once")


class FailureOut(BaseModel):
    desktop_id: str
    name: str
    message: str


class RolloutOut(BaseModel):
    pool_id: str
    state: str = Field(description="rolling, paused or done; none before the first")
    image: str = Field(description="the image aimed at")
    image_id: str
    previous_image: str = Field(description="the image a roll back aims at")
    rolled_back: bool
    include_persistent: bool
    batch_size: int
    total: int = Field(description="the pool's desktops in the center it provisions from")
    on_image: int = Field(description="desktops on the image aimed at")
    rebuilding: int
    to_rebuild: int = Field(description="free desktops whose rebuild has not started")
    waiting_for_users: int = Field(description="held desktops, rebuilt once released")
    persistent_kept: int = Field(description="persistent desktops left on their image")
    failed: int
    not_ready: int = Field(description="unheld desktops neither free nor rebuilding")
    summary: str = Field(description="the progress in words")
    failures: list[FailureOut]
    last_error: str
    started_by: str
    updated_at: str


class UpkeepOut(Upkeep):
    pool_id: str
    last_scheduled_on: str = Field(description="the local date of the last window served")


def _out(answer: dict[str, Any]) -> RolloutOut:
    return RolloutOut.model_validate(answer)


def router() -> APIRouter:
    r = APIRouter()

    @r.post(
        "/pools/{pool_id}/rollout",
        tags=["pools"],
        summary="Roll a pool onto a new image",
        description="Sets the pool's image (new builds use it) and rebuilds its desktops: "
        "free ones first, a batch at a time, each held pooled desktop once its user "
        "released it, persistent ones only with `include_persistent`. Never a desktop "
        "in use. Refused while another rollout of the pool is rolling or paused.",
        openapi_extra=_WRITE,
    )
    def start_rollout(pool_id: str, body: RolloutIn, ctx: Ctx, who: AdminWriter) -> RolloutOut:
        request = rollouts.RolloutRequest(
            image=body.image,
            include_persistent=body.include_persistent,
            batch_size=body.batch_size,
        )
        return _out(rollouts.start(ctx, pool_id, request, who))

    @r.get(
        "/pools/{pool_id}/rollout",
        tags=["pools"],
        summary="A pool's rollout in numbers and words",
    )
    def get_rollout(pool_id: str, ctx: Ctx, who: AdminReader) -> RolloutOut:
        return _out(rollouts.status(ctx, pool_id, who))

    def _step(what: RolloutStep, summary: str, description: str) -> None:
        @r.post(
            f"/pools/{{pool_id}}/rollout/{what.value.replace('_', '-')}",
            tags=["pools"],
            summary=summary,
            description=description,
            openapi_extra=_WRITE,
            name=f"{what.value}_rollout",
        )
        def act(pool_id: str, ctx: Ctx, who: AdminWriter) -> RolloutOut:
            return _out(rollouts.step(ctx, pool_id, what, who))

    _step(
        RolloutStep.PAUSE,
        "Pause a pool's rollout",
        "No new rebuilds start; those under way finish.",
    )
    _step(RolloutStep.RESUME, "Resume a paused rollout", "Failed rebuilds are tried again.")
    _step(
        RolloutStep.ROLL_BACK,
        "Roll a pool back to its previous image",
        "The rollout aims at the image the pool had before it (rolling again, by the "
        "same rules); a second roll back aims at the new image again.",
    )

    @r.get("/pools/{pool_id}/upkeep", tags=["pools"], summary="A pool's desktop upkeep")
    def get_upkeep(pool_id: str, ctx: Ctx, who: AdminReader) -> UpkeepOut:
        return UpkeepOut.model_validate(pool_upkeep.read(ctx, pool_id, who))

    @r.put(
        "/pools/{pool_id}/upkeep",
        tags=["pools"],
        summary="Set a pool's desktop upkeep",
        description="A daily refresh (rebuilt from the pool's image) or reboot of the "
        "pool's free desktops in a time window, skipping desktops in use; and a refresh "
        "of each desktop its user released before anyone else gets it (the equivalent "
        "of reverting to a snapshot). Rebuilds need a center that can rebuild.",
        openapi_extra={"x-permission": "pools:upkeep"},
    )
    def put_upkeep(pool_id: str, body: Upkeep, ctx: Ctx, who: AdminWriter) -> UpkeepOut:
        return UpkeepOut.model_validate(pool_upkeep.write(ctx, pool_id, body, who))

    return r

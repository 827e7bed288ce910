"""The portal's "how long until a plan acts" on each of the user's desktops."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from deskbroker.api.deps import Ctx, Principal
from deskbroker.services import my_plans


class PlanActionOut(BaseModel):
    desktop_id: str
    desktop_name: str
    plan: str | None = Field(description="power or release; null when no action waits")
    trigger: str | None = Field(description="what set it off: disconnect, logout, idle")
    action: str | None = Field(description="what will happen: suspend, stop, release...")
    due_at: datetime | None


class PlanActionsOut(BaseModel):
    items: list[PlanActionOut]


def router() -> APIRouter:
    r = APIRouter()

    @r.get(
        "/client/plans",
        tags=["client"],
        summary="What your plans will do to your desktops next",
        description="Each desktop you hold, with the earliest power or release plan "
        "action waiting on it (after a disconnect, a logout or idle time) and when it is "
        "due; null fields when none waits. Connecting again cancels a disconnect's.",
    )
    def my_plan_actions(ctx: Ctx, who: Principal) -> PlanActionsOut:
        return PlanActionsOut(
            items=[PlanActionOut(**vars(p)) for p in my_plans.next_actions(ctx, who.user_id)]
        )

    return r

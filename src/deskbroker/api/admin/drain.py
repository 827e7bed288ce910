"""Drain and undrain a desktop, a pool or a center: out of the claim, sessions untouched."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from deskbroker.api.admin.crud import scope
from deskbroker.api.deps import AdminWriter, Ctx
from deskbroker.api.schemas import Body
from deskbroker.services import drain as drain_service
from deskbroker.services.drain import DrainKind, DrainOutcome


class DrainIn(Body):
    message: str = Field(
        default="",
        max_length=1000,
        description="shown, through their desktops' agents, to the users of the affected "
        "desktops who have a session in progress (empty: nobody is told)",
    )


class DrainOut(BaseModel):
    kind: str = Field(description="desktop, pool or center")
    id: str
    name: str
    drained: bool
    drained_at: datetime | None
    desktops: int = Field(description="desktops it covers")
    sessions_in_progress: int = Field(description="sessions on them, left alone")
    messages: int = Field(description="messages queued for their agents")
    message: str = Field(description="what happened, in words")


def _out(outcome: DrainOutcome) -> DrainOut:
    return DrainOut(
        kind=outcome.kind,
        id=outcome.id,
        name=outcome.name,
        drained=outcome.drained_at is not None,
        drained_at=outcome.drained_at,
        desktops=outcome.desktops,
        sessions_in_progress=outcome.sessions,
        messages=outcome.messages,
        message=outcome.words,
    )


_DRAIN = "Drain a {0}: no login gets {1}; what is assigned stays, sessions in progress go on"
_UNDRAIN = "Undrain a {0}: back in the claim; users who queued meanwhile are served"


def router() -> APIRouter:
    r = APIRouter()

    def drain(
        ctx: Ctx, who: AdminWriter, kind: DrainKind, object_id: str, body: DrainIn
    ) -> DrainOut:
        return _out(drain_service.drain(ctx, who, kind, object_id, scope(who), body.message))

    def undrain(ctx: Ctx, who: AdminWriter, kind: DrainKind, object_id: str) -> DrainOut:
        return _out(drain_service.undrain(ctx, who, kind, object_id, scope(who)))

    @r.post(
        "/desktops/{desktop_id}/drain", tags=["desktops"], summary=_DRAIN.format("desktop", "it")
    )
    def drain_desktop(desktop_id: str, body: DrainIn, ctx: Ctx, who: AdminWriter) -> DrainOut:
        return drain(ctx, who, "desktop", desktop_id, body)

    @r.post("/desktops/{desktop_id}/undrain", tags=["desktops"], summary=_UNDRAIN.format("desktop"))
    def undrain_desktop(desktop_id: str, ctx: Ctx, who: AdminWriter) -> DrainOut:
        return undrain(ctx, who, "desktop", desktop_id)

    @r.post(
        "/pools/{pool_id}/drain", tags=["pools"], summary=_DRAIN.format("pool", "a desktop from it")
    )
    def drain_pool(pool_id: str, body: DrainIn, ctx: Ctx, who: AdminWriter) -> DrainOut:
        return drain(ctx, who, "pool", pool_id, body)

    @r.post("/pools/{pool_id}/undrain", tags=["pools"], summary=_UNDRAIN.format("pool"))
    def undrain_pool(pool_id: str, ctx: Ctx, who: AdminWriter) -> DrainOut:
        return undrain(ctx, who, "pool", pool_id)

    @r.post(
        "/centers/{center_id}/drain",
        tags=["centers"],
        summary=_DRAIN.format("center", "a desktop of it"),
    )
    def drain_center(center_id: str, body: DrainIn, ctx: Ctx, who: AdminWriter) -> DrainOut:
        return drain(ctx, who, "center", center_id, body)

    @r.post("/centers/{center_id}/undrain", tags=["centers"], summary=_UNDRAIN.format("center"))
    def undrain_center(center_id: str, ctx: Ctx, who: AdminWriter) -> DrainOut:
        return undrain(ctx, who, "center", center_id)

    return r

"""Deleting a desktop (from disk, or forgotten), the machines scans leave out, and
deleting a center (plain, or forced when its cloud is gone for good)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from deskbroker.api.admin.crud import MAX_OFFSET, scope
from deskbroker.api.deps import AdminReader, AdminWriter, Ctx
from deskbroker.services import center_removal, desktop_removal
from deskbroker.services.desktop_removal import Forgotten


class RemovalOut(BaseModel):
    desktop_id: str
    name: str
    outcome: str = Field(description="deleting: the engine terminates its instance")
    power_state: str = Field(description="deleting until the center confirms it is gone")
    message: str


class ForgottenOut(BaseModel):
    id: str
    tenant_id: str
    center_id: str
    external_id: str = Field(description="the center's own id of the machine")
    name: str = Field(description="the name the desktop had")
    actor: str = Field(description="who deleted it")
    forgotten_at: datetime


def _forgotten_out(row: Forgotten) -> dict[str, Any]:
    return ForgottenOut(**row.__dict__).model_dump(mode="json")


FORCE = (
    "true: also drop the center's desktops that are being removed (a cloud gone for good "
    "never confirms them): their machines may still exist, and the broker no longer tracks "
    "them; the event center.machines_abandoned names each one, for a clean-up by hand"
)


def router() -> APIRouter:
    r = APIRouter()

    @r.delete(
        "/desktops/{item_id}",
        tags=["desktops"],
        status_code=204,
        summary="Delete a desktop: terminate it if the broker built it, else forget it",
        description=(
            "A deletable desktop (what the broker built, unless its pool says otherwise) "
            "on a center that can delete machines is marked `deleting` and its instance "
            "terminated by the engine (202, the desktop stays `deleting` until the center "
            "confirms it is gone). Any other desktop is forgotten (204): its machine is "
            "left alone and its center's scans leave it out until it is un-forgotten "
            "(`/forgotten-desktops`). 409 while it is assigned or being built; 403 when "
            "a pool that serves an account stronger than the caller's takes it."
        ),
        responses={202: {"model": RemovalOut, "description": "the engine deletes it"}},
    )
    def delete_desktop(item_id: str, ctx: Ctx, who: AdminWriter) -> Response:
        done = desktop_removal.delete_desktop(ctx, who, item_id, scope(who))
        if done.outcome != "deleting":
            return Response(status_code=204)
        body = RemovalOut(
            desktop_id=done.desktop_id,
            name=done.name,
            outcome=done.outcome,
            power_state="deleting",
            message=done.words,
        )
        return JSONResponse(body.model_dump(mode="json"), status_code=202)

    @r.delete(
        "/centers/{item_id}",
        tags=["centers"],
        status_code=204,
        summary="Delete a center",
        description=(
            "Its desktops are forgotten with it (the machines are left alone). 409 while a "
            "user holds one of its desktops, while a pool uses it, or while desktops of it "
            "are being removed (the engine terminates their instances; their rows are its "
            "only record of them) unless `force` is true; 403 when a pool that serves an "
            "account stronger than the caller's takes its desktops."
        ),
    )
    def delete_centers(
        item_id: str,
        ctx: Ctx,
        who: AdminWriter,
        force: Annotated[bool, Query(description=FORCE)] = False,
    ) -> Response:
        center_removal.delete_center(ctx, who, item_id, force=force)
        return Response(status_code=204)

    @r.get(
        "/forgotten-desktops",
        tags=["desktops"],
        summary="Machines an administrator deleted that scans leave out",
    )
    def list_forgotten(
        ctx: Ctx,
        who: AdminReader,
        center_id: str | None = None,
        limit: int = Query(50, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
    ) -> dict[str, Any]:
        rows, total = desktop_removal.list_forgotten(
            ctx, scope(who), center_id=center_id, limit=limit, offset=offset
        )
        items = [_forgotten_out(row) for row in rows]
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    @r.delete(
        "/forgotten-desktops/{item_id}",
        tags=["desktops"],
        status_code=204,
        summary="Un-forget a machine: its center's next scan (a full one, now) imports it",
        description="403 when a pool that serves an account stronger than the caller's "
        "takes the desktops of the machine's center.",
    )
    def unforget(item_id: str, ctx: Ctx, who: AdminWriter) -> Response:
        desktop_removal.unforget(ctx, who, item_id, scope(who))
        return Response(status_code=204)

    return r

"""Admin views of what users do: assignments, sessions and the event log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Response

from deskbroker.api.admin.crud import MAX_OFFSET, scope
from deskbroker.api.deps import AdminReader, AdminWriter, Ctx
from deskbroker.api.schemas import Body, Id
from deskbroker.domain.offers import AssignmentKind
from deskbroker.services import admin_views, assignments


class AssignmentIn(Body):
    desktop_id: Id
    user_id: Id
    pool_id: Id | None = None
    kind: AssignmentKind = AssignmentKind.PERSISTENT


def router() -> APIRouter:
    r = APIRouter()

    @r.get("/assignments", tags=["assignments"], summary="Who holds which desktop")
    def list_assignments(
        ctx: Ctx,
        who: AdminReader,
        user_id: str | None = None,
        pool_id: str | None = None,
        limit: int = Query(50, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
    ) -> dict[str, Any]:
        items, total = assignments.assignments(ctx, scope(who), user_id, pool_id, limit, offset)
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    @r.post("/assignments", tags=["assignments"], status_code=201, summary="Assign a desktop")
    def create_assignment(body: AssignmentIn, ctx: Ctx, who: AdminWriter) -> dict[str, Any]:
        return assignments.assign(
            ctx,
            who,
            scope(who),
            desktop_id=body.desktop_id,
            user_id=body.user_id,
            pool_id=body.pool_id,
            kind=body.kind,
        )

    @r.delete(
        "/assignments/{desktop_id}",
        tags=["assignments"],
        status_code=204,
        summary="Release an assignment",
    )
    def delete_assignment(desktop_id: str, ctx: Ctx, who: AdminWriter) -> Response:
        assignments.unassign(ctx, who, scope(who), desktop_id)
        return Response(status_code=204)

    @r.get("/sessions", tags=["sessions"], summary="User sessions on desktops")
    def list_sessions(
        ctx: Ctx,
        who: AdminReader,
        state: str | None = None,
        user_id: str | None = None,
        desktop_id: str | None = None,
        limit: int = Query(50, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
    ) -> dict[str, Any]:
        items, total = admin_views.sessions(
            ctx,
            scope(who),
            state=state,
            user_id=user_id,
            desktop_id=desktop_id,
            limit=limit,
            offset=offset,
        )
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    @r.get("/events", tags=["events"], summary="The event log")
    def list_events(
        ctx: Ctx,
        who: AdminReader,
        kind: str | None = None,
        user_id: str | None = None,
        desktop_id: str | None = None,
        pool_id: str | None = None,
        since: datetime | None = None,
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
    ) -> dict[str, Any]:
        items, total = admin_views.events(
            ctx,
            scope(who),
            kind=kind,
            user_id=user_id,
            desktop_id=desktop_id,
            pool_id=pool_id,
            since=since,
            limit=limit,
            offset=offset,
        )
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    return r

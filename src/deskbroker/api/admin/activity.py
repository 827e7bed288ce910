"""Admin views of what users do: assignments, sessions and the event log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from deskbroker.api.admin.crud import MAX_OFFSET, scope
from deskbroker.api.admin.identity import may_manage
from deskbroker.api.deps import AdminReader, AdminWriter, Ctx
from deskbroker.api.schemas import Body, Id
from deskbroker.domain.offers import AssignmentKind
from deskbroker.errors import Conflict, InvalidInput, NotFound
from deskbroker.services import access
from deskbroker.services.desktops import is_member, release
from deskbroker.store import claims, events
from deskbroker.store.tables import Desktop, Event, Pool, SessionRow, User


class AssignmentIn(Body):
    desktop_id: Id
    user_id: Id
    pool_id: Id | None = None
    kind: AssignmentKind = AssignmentKind.PERSISTENT


def _assignment(row: Any) -> dict[str, Any]:
    return {
        "desktop_id": row.id,
        "desktop_name": row.name,
        "user_id": row.assigned_user_id,
        "pool_id": row.assigned_pool_id,
        "kind": row.assignment_kind,
        "assigned_at": row.assigned_at.isoformat() if row.assigned_at else None,
    }


def _tenant_clause(model: Any, tenant: str | None) -> list[Any]:
    return [] if tenant is None else [model.tenant_id == tenant]


def _page(session: Session, query: Any, limit: int, offset: int) -> tuple[list[Any], int]:
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    return list(session.scalars(query.limit(limit).offset(offset)).all()), int(total)


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
        query = select(Desktop).where(
            Desktop.assigned_user_id.is_not(None), *_tenant_clause(Desktop, scope(who))
        )
        if user_id:
            query = query.where(Desktop.assigned_user_id == user_id)
        if pool_id:
            query = query.where(Desktop.assigned_pool_id == pool_id)
        with ctx.db.read() as session:
            rows, total = _page(
                session, query.order_by(Desktop.assigned_at, Desktop.id), limit, offset
            )
            return {
                "items": [_assignment(d) for d in rows],
                "total": total,
                "limit": limit,
                "offset": offset,
            }

    @r.post("/assignments", tags=["assignments"], status_code=201, summary="Assign a desktop")
    def create_assignment(body: AssignmentIn, ctx: Ctx, who: AdminWriter) -> dict[str, Any]:
        tenant = scope(who)
        with ctx.db.write() as session:
            desktop = session.get(Desktop, body.desktop_id)
            if desktop is None or (tenant is not None and desktop.tenant_id != tenant):
                raise InvalidInput(f"desktop {body.desktop_id} does not exist")
            user = session.get(User, body.user_id)
            if user is None or (tenant is not None and user.tenant_id != tenant):
                raise InvalidInput(f"user {body.user_id} does not exist")
            # The desktop's address is where the user's client connects and types: only
            # someone at or above the user's standing may choose it for them.
            session.info.update(access.actor_info(ctx, who))
            may_manage(session, user, "assign a desktop to")
            if user.tenant_id != desktop.tenant_id:
                # Only a global admin sees both: say why, rather than deny what they see.
                raise InvalidInput(
                    f"user {user.username} and desktop {desktop.name} are in different tenants"
                )
            if body.pool_id is not None:
                pool = session.get(Pool, body.pool_id)
                if pool is None or pool.tenant_id != desktop.tenant_id:
                    raise InvalidInput(f"pool {body.pool_id} does not exist")
                if not is_member(session, body.pool_id, desktop.id):
                    raise InvalidInput(f"desktop {desktop.name} is not in pool {pool.name}")
            if desktop.assigned_user_id is not None:
                raise Conflict(f"desktop {desktop.name} is already assigned")
            if not claims.assign(
                session,
                desktop_id=desktop.id,
                user_id=user.id,
                pool_id=body.pool_id,
                kind=body.kind.value,
            ):
                raise Conflict(f"desktop {desktop.name} was assigned by someone else just now")
            events.append(
                session,
                "assign",
                tenant_id=desktop.tenant_id,
                actor=who.username,
                user_id=user.id,
                desktop_id=desktop.id,
                pool_id=body.pool_id,
                detail={"reason": "admin"},
            )
            session.refresh(desktop)
            return _assignment(desktop)

    @r.delete(
        "/assignments/{desktop_id}",
        tags=["assignments"],
        status_code=204,
        summary="Release an assignment",
    )
    def delete_assignment(desktop_id: str, ctx: Ctx, who: AdminWriter) -> Response:
        tenant = scope(who)
        with ctx.db.write() as session:
            desktop = session.get(Desktop, desktop_id)
            if desktop is None or (tenant is not None and desktop.tenant_id != tenant):
                raise NotFound(f"desktop {desktop_id} does not exist")
            release(
                session,
                desktop_id=desktop.id,
                tenant_id=desktop.tenant_id,
                user_id=None,
                actor=who.username,
            )
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
        query = select(SessionRow).where(*_tenant_clause(SessionRow, scope(who)))
        for column, value in (
            (SessionRow.state, state),
            (SessionRow.user_id, user_id),
            (SessionRow.desktop_id, desktop_id),
        ):
            if value:
                query = query.where(column == value)
        with ctx.db.read() as session:
            rows, total = _page(
                session, query.order_by(SessionRow.started_at.desc()), limit, offset
            )
            items = [{c.key: getattr(s, c.key) for c in SessionRow.__table__.columns} for s in rows]
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
        query = select(Event).where(*_tenant_clause(Event, scope(who)))
        for column, value in (
            (Event.kind, kind),
            (Event.user_id, user_id),
            (Event.desktop_id, desktop_id),
            (Event.pool_id, pool_id),
        ):
            if value:
                query = query.where(column == value)
        if since is not None:
            query = query.where(Event.at >= since)
        with ctx.db.read() as session:
            rows, total = _page(session, query.order_by(Event.id.desc()), limit, offset)
            items = [{c.key: getattr(e, c.key) for c in Event.__table__.columns} for e in rows]
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    return r

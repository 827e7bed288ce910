"""Admin side of sessions and plans: agent tokens and the plan timers waiting to fire."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query
from pydantic import BaseModel, field_validator
from sqlalchemy import func, select

from deskbroker.api.admin.crud import MAX_OFFSET, scope
from deskbroker.api.deps import AdminReader, AdminWriter, Ctx
from deskbroker.domain.timestamps import aware
from deskbroker.services import sessions
from deskbroker.store.tables import Timer


class AgentTokenOut(BaseModel):
    token: str
    token_type: str = "bearer"
    expires_at: int
    desktop_id: str
    desktop_name: str


class TimerOut(BaseModel):
    id: str
    desktop_id: str
    session_id: str | None
    plan: str
    trigger: str
    action: str
    due_at: datetime
    failures: int
    last_error: str
    created_at: datetime

    @field_validator("due_at", "created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # SQLite hands back naive datetimes; every stored time is UTC.
        return aware(value)


class TimerPage(BaseModel):
    items: list[TimerOut]
    total: int
    limit: int
    offset: int


def router() -> APIRouter:
    r = APIRouter()

    @r.post(
        "/desktops/{desktop_id}/agent-token",
        tags=["desktops"],
        status_code=201,
        summary="Mint the desktop's agent token",
        description="The token the desktop's agent sends with its session events. Minting "
        "a new one revokes the desktop's previous token.",
    )
    def agent_token(desktop_id: str, ctx: Ctx, who: AdminWriter) -> AgentTokenOut:
        token, expires, desktop = sessions.issue_agent_token(
            ctx, desktop_id, scope(who), who.username
        )
        return AgentTokenOut(
            token=token, expires_at=expires, desktop_id=desktop.id, desktop_name=desktop.name
        )

    @r.get("/timers", tags=["sessions"], summary="Plan actions waiting to fire")
    def list_timers(
        ctx: Ctx,
        who: AdminReader,
        desktop_id: str | None = Query(None, max_length=64),
        plan: str | None = Query(None, max_length=20),
        limit: int = Query(50, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
    ) -> TimerPage:
        query = select(Timer)
        tenant = scope(who)
        if tenant is not None:
            query = query.where(Timer.tenant_id == tenant)
        if desktop_id:
            query = query.where(Timer.desktop_id == desktop_id)
        if plan:
            query = query.where(Timer.plan == plan)
        with ctx.db.read() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(
                query.order_by(Timer.due_at, Timer.id).limit(limit).offset(offset)
            ).all()
            items = [TimerOut.model_validate(t, from_attributes=True) for t in rows]
        return TimerPage(items=items, total=int(total), limit=limit, offset=offset)

    return r

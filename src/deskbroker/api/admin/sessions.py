"""Admin side of sessions and plans: agent tokens and the plan timers waiting to fire."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, field_validator

from deskbroker.api.admin.crud import MAX_OFFSET, scope
from deskbroker.api.deps import AdminReader, AdminWriter, Ctx
from deskbroker.domain.timestamps import aware
from deskbroker.services import admin_views, agents, sessions, standing


class AgentTokenOut(BaseModel):
    token: str
    token_type: str = "bearer"
    expires_at: int
    desktop_id: str
    desktop_name: str


class EnrolmentSecretOut(BaseModel):
    secret: str = Field(description="the agent's enrolment_token; single use")
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
    took_out_at: datetime | None = Field(
        None,
        description="When a terminate this timer is carrying out took its desktop out of "
        "the claim (the desktop stays out until the terminate ends or the timer puts it "
        "back); null for any other timer.",
    )

    @field_validator("due_at", "created_at", "took_out_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # SQLite hands back naive datetimes; every stored time is UTC.
        return None if value is None else aware(value)


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
        "a new one revokes the desktop's previous token. Refused (403) for a desktop a "
        "stronger account holds or is offered (the stronger-account rule).",
    )
    def agent_token(desktop_id: str, ctx: Ctx, who: AdminWriter) -> AgentTokenOut:
        standing.check_desktop_reach(ctx, who, desktop_id, scope(who), "mint the agent token of")
        token, expires, desktop = sessions.issue_agent_token(
            ctx, desktop_id, scope(who), who.username
        )
        return AgentTokenOut(
            token=token, expires_at=expires, desktop_id=desktop.id, desktop_name=desktop.name
        )

    @r.post(
        "/desktops/{desktop_id}/enrolment-secret",
        tags=["desktops"],
        status_code=201,
        summary="Mint a single-use enrolment secret for the desktop's agent",
        description="For a machine the broker did not build (desktops it builds get one in "
        "their instance metadata), or an agent that must enrol again: set it as the "
        "agent's enrolment_token. Valid DESKBROKER_AGENT_ENROL_TTL_S, once.",
    )
    def enrolment_secret(desktop_id: str, ctx: Ctx, who: AdminWriter) -> EnrolmentSecretOut:
        standing.check_desktop_reach(
            ctx, who, desktop_id, scope(who), "mint an enrolment secret for"
        )
        issued = agents.issue_enrolment_secret(ctx, desktop_id, scope(who), who.username)
        return EnrolmentSecretOut(
            secret=issued.secret,
            expires_at=issued.expires_at,
            desktop_id=issued.desktop_id,
            desktop_name=issued.desktop_name,
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
        rows, total = admin_views.timers(
            ctx, scope(who), desktop_id=desktop_id, plan=plan, limit=limit, offset=offset
        )
        items = [TimerOut.model_validate(t) for t in rows]
        return TimerPage(items=items, total=int(total), limit=limit, offset=offset)

    return r

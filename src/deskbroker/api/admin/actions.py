"""Operations on running desktops and sessions: what a helpdesk does all day."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field, StringConstraints

from deskbroker.api.admin.crud import scope
from deskbroker.api.deps import AdminWriter, Ctx
from deskbroker.api.schemas import Body
from deskbroker.services import helpdesk
from deskbroker.services import power as power_service
from deskbroker.services.helpdesk import PowerAction


class PowerIn(Body):
    action: PowerAction
    force: bool = Field(
        default=False, description="stop, suspend or reboot even with a session in use"
    )


class SessionMessageIn(Body):
    message: Annotated[str, StringConstraints(min_length=1, max_length=1000)] = Field(
        description="shown to the user on their desktop"
    )


class SessionOrderOut(BaseModel):
    action_id: str
    session_id: str
    kind: str = Field(description="message, lock or logoff")
    desktop_id: str
    desktop_name: str
    username: str
    agent_state: str = Field(description="running, lost or unknown: a lost agent gets it later")
    message: str = Field(description="what happens next, in words")


class SessionEndIn(Body):
    reason: str = Field(default="", max_length=500, description="kept in the audit log")


def router() -> APIRouter:
    r = APIRouter()

    @r.post(
        "/desktops/{desktop_id}/power",
        tags=["desktops"],
        summary="Start, stop, suspend, resume or reboot a desktop",
    )
    def power_desktop(desktop_id: str, body: PowerIn, ctx: Ctx, who: AdminWriter) -> dict[str, Any]:
        result = power_service.power(
            ctx, who, desktop_id, scope(who), body.action, force=body.force
        )
        return {
            "desktop_id": result.desktop_id,
            "action": result.action,
            "was": result.was,
            "power_state": result.power_state,
        }

    @r.post(
        "/sessions/{session_id}/end",
        tags=["sessions"],
        summary="End a session the desktop's agent can no longer report (as a logout)",
    )
    def end_session(
        session_id: str, body: SessionEndIn, ctx: Ctx, who: AdminWriter
    ) -> dict[str, Any]:
        ended = helpdesk.end_session(ctx, who, session_id, scope(who), body.reason)
        return {"session_id": ended.session_id, "state": ended.state, "was": ended.was}

    def _order_out(order: helpdesk.SessionOrder) -> SessionOrderOut:
        return SessionOrderOut(
            action_id=order.action_id,
            session_id=order.session_id,
            kind=order.kind,
            desktop_id=order.desktop_id,
            desktop_name=order.desktop_name,
            username=order.username,
            agent_state=order.agent_state,
            message=order.message,
        )

    order_doc = (
        "Queued for the desktop's agent, which pulls it with its next heartbeat (202): the "
        "answer says so, not that it is done. The outcome comes back in the agent's "
        "next heartbeat; the audit log keeps who sent it."
    )

    @r.post(
        "/sessions/{session_id}/message",
        tags=["sessions"],
        status_code=202,
        summary="Show the session's user a message, through the desktop's agent",
        description=order_doc,
    )
    def message_session(
        session_id: str, body: SessionMessageIn, ctx: Ctx, who: AdminWriter
    ) -> SessionOrderOut:
        return _order_out(
            helpdesk.order_session(ctx, who, session_id, scope(who), "message", body.message)
        )

    @r.post(
        "/sessions/{session_id}/lock",
        tags=["sessions"],
        status_code=202,
        summary="Lock the session's screen, through the desktop's agent",
        description=order_doc,
    )
    def lock_session(session_id: str, ctx: Ctx, who: AdminWriter) -> SessionOrderOut:
        return _order_out(helpdesk.order_session(ctx, who, session_id, scope(who), "lock"))

    @r.post(
        "/sessions/{session_id}/logoff",
        tags=["sessions"],
        status_code=202,
        summary="Log the session's user off, through the desktop's agent",
        description=order_doc + " When the agent reports the logout, the release and "
        "power plans follow as for any logout. An agent that no longer reports: "
        "POST /sessions/{session_id}/end.",
    )
    def logoff_session(session_id: str, ctx: Ctx, who: AdminWriter) -> SessionOrderOut:
        return _order_out(helpdesk.order_session(ctx, who, session_id, scope(who), "logoff"))

    return r

"""Operations on running desktops and sessions: what a helpdesk does all day."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field

from deskbroker.api.admin.crud import scope
from deskbroker.api.deps import AdminWriter, Ctx
from deskbroker.api.schemas import Body
from deskbroker.centers.base import PowerAction
from deskbroker.domain.plans import AgentEvent
from deskbroker.domain.states import SessionState
from deskbroker.errors import Conflict
from deskbroker.services import power as power_service
from deskbroker.services import sessions as session_service
from deskbroker.store import events
from deskbroker.store.repository import Repository
from deskbroker.store.tables import SessionRow


class PowerIn(Body):
    action: PowerAction
    force: bool = Field(
        default=False, description="stop, suspend or reboot even with a session in use"
    )


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
        with ctx.db.read() as session:
            row = Repository(SessionRow, "session").get(session, session_id, scope(who))
            desktop_id, username, key, state = (
                row.desktop_id,
                row.username,
                row.session_key,
                row.state,
            )
        if state == SessionState.LOGGED_OUT.value:
            raise Conflict(f"session {session_id} of {username} has already ended")
        # As if the agent had reported the logout: the release and power plans follow.
        outcome = session_service.record(
            ctx, desktop_id, AgentEvent.LOGOUT, user=username, session_key=key or None
        )
        with ctx.db.write() as session:
            events.append(
                session,
                "admin.session_end",
                tenant_id=row.tenant_id,
                actor=who.username,
                user_id=who.user_id,
                desktop_id=desktop_id,
                detail={"session": session_id, "user": username, "reason": body.reason},
            )
        return {"session_id": outcome.session_id, "state": outcome.state, "was": state}

    return r

"""The desktop agent's API: session events, authenticated by the desktop's agent token."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    StringConstraints,
    WithJsonSchema,
)

from deskbroker.api.deps import AgentPrincipal, Ctx
from deskbroker.api.schemas import Body, Id
from deskbroker.domain.plans import AgentEvent
from deskbroker.services import sessions


def _short_text(value: Any) -> Any:
    # A date-time is a few dozen characters; refuse long text before parsing it, and
    # numbers too: the schema promises an ISO 8601 string, not Unix seconds.
    if not isinstance(value, str | datetime) or (isinstance(value, str) and len(value) > 64):
        raise ValueError("is not an ISO 8601 date-time")
    return value


def _address(value: str) -> str:
    # Stored and shown to admins as where a user connected from: an address, nothing else.
    if value == "":
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("is not an IPv4 or IPv6 address such as 192.0.2.7") from None


Moment = Annotated[
    datetime,
    BeforeValidator(_short_text),
    WithJsonSchema({"type": "string", "format": "date-time", "maxLength": 64}),
]


class AgentEventIn(Body):
    event: AgentEvent
    user: Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
    session_key: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        default=None,
        description="the desktop's own id of the session (logind id, RDS session id); "
        "tells apart two sessions of one user",
    )
    at: Moment | None = Field(
        default=None,
        description="when it happened, within DESKBROKER_AGENT_CLOCK_WINDOW_S (5 minutes) of "
        "the broker's clock; the broker's clock when left out",
    )
    desktop_id: Id | None = Field(
        default=None, description="checked against the token's desktop when given"
    )
    protocol: Annotated[str, StringConstraints(max_length=20)] = ""
    client_address: Annotated[
        str, StringConstraints(max_length=64, strip_whitespace=True), AfterValidator(_address)
    ] = Field(default="", description="the IP address the user connects from")


class TimerOut(BaseModel):
    id: str
    plan: str
    trigger: str
    action: str
    due_at: datetime


class AgentEventOut(BaseModel):
    session_id: str
    desktop_id: str
    user: str
    user_id: str | None
    state: str
    previous_state: str | None
    changed: bool = Field(description="false when the report repeated the session's state")
    timers_set: list[TimerOut]
    timers_cancelled: int


def router() -> APIRouter:
    r = APIRouter(prefix="/agent")

    @r.post(
        "/events",
        tags=["agent"],
        summary="Report a session event on this desktop",
        description="Login, logout, disconnect, reconnect, lock, unlock, idle, active. "
        "An event that cannot follow the session's state is refused with 409.",
        responses={
            401: {"description": "missing, expired or replaced agent token"},
            403: {"description": "not an agent token, or another desktop's"},
            409: {
                "description": "the event cannot follow the session's state, or a login "
                "beyond the sessions the desktop allows"
            },
            422: {"description": "a malformed body, an `at` too far from now"},
        },
    )
    def post_event(body: AgentEventIn, ctx: Ctx, who: AgentPrincipal) -> AgentEventOut:
        desktop_id = sessions.check_agent(ctx, who, body.desktop_id)
        outcome = sessions.record(
            ctx,
            desktop_id,
            body.event,
            user=body.user,
            session_key=body.session_key,
            at=body.at,
            protocol=body.protocol,
            client_address=body.client_address,
        )
        return AgentEventOut(
            session_id=outcome.session_id,
            desktop_id=outcome.desktop_id,
            user=outcome.username,
            user_id=outcome.user_id,
            state=outcome.state,
            previous_state=outcome.previous,
            changed=outcome.changed,
            timers_set=[
                TimerOut(id=t.id, plan=t.plan, trigger=t.trigger, action=t.action, due_at=t.due_at)
                for t in outcome.scheduled
            ],
            timers_cancelled=outcome.cancelled,
        )

    return r

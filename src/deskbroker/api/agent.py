"""The desktop agent's API (version 1): enrolment, token refresh, heartbeats with pulled
actions, and session events, all but the first two authenticated by the desktop's agent
token. Every body is schema-checked: an unknown field or a malformed value is a 422."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
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
from deskbroker.services import agent_rate, agents, enrolments, sessions


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
    seq: int | None = Field(
        default=None,
        ge=1,
        le=2**62,
        description="the agent's sequence number of the event; one not above the last "
        "taken from this desktop (a replay, a late arrival) is ignored, not applied",
    )
    key: Annotated[str, StringConstraints(max_length=100)] | None = Field(
        default=None, description="the event's idempotency key, kept in the event log"
    )


Address = Annotated[
    str, StringConstraints(max_length=64, strip_whitespace=True), AfterValidator(_address)
]


class IdentityIn(Body):
    instance: Annotated[str, StringConstraints(max_length=200)] = Field(
        default="",
        description="the instance id from the metadata service (OpenStack uuid, EC2 instance-id)",
    )
    hostname: Annotated[str, StringConstraints(max_length=255)] = ""
    addresses: list[Address] = Field(default_factory=list, max_length=16)
    public_ip: Address = Field(default="", description="public-ipv4 from the metadata service")

    def identity(self) -> agents.AgentIdentity:
        return agents.AgentIdentity(
            self.instance, self.hostname, tuple(a for a in self.addresses if a), self.public_ip
        )


class EnrolIn(Body):
    secret: Annotated[str, StringConstraints(min_length=1, max_length=300)] = Field(
        description="the single-use enrolment secret from the instance metadata, or the "
        "tenant's enrolment key (dbk1...)"
    )
    identity: IdentityIn = Field(default_factory=IdentityIn)


class CredentialOut(BaseModel):
    desktop_id: str
    desktop_name: str
    token: str
    expires_at: int
    refresh_secret: str = Field(description="buys the next token; replaced on every use")


class EnrolWaitingOut(BaseModel):
    pending_id: str
    poll_handle: str = Field(description="for POST /api/v1/agent/enrol/poll; keep it secret")
    retry_after_s: int
    detail: str


class PollIn(Body):
    poll_handle: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class RefreshIn(Body):
    desktop_id: Id
    refresh_secret: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class ActionDone(Body):
    id: Id
    ok: bool
    detail: Annotated[str, StringConstraints(max_length=2000)] = ""


class HeartbeatIn(Body):
    identity: IdentityIn = Field(default_factory=IdentityIn)
    done: list[ActionDone] = Field(
        default_factory=list, max_length=100, description="outcomes of actions carried out"
    )
    queued: int = Field(default=0, ge=0, le=10**9, description="events waiting in its queue")
    agent_version: Annotated[str, StringConstraints(max_length=40)] = ""


class ActionOut(BaseModel):
    id: str
    kind: str = Field(description="logoff, lock or message")
    session_key: str
    message: str


class HeartbeatOut(BaseModel):
    desktop_id: str
    assigned_user: str | None
    actions: list[ActionOut]
    heartbeat_s: int
    token: str | None = Field(default=None, description="a replacement token, when one is due")
    expires_at: int | None = None


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
    ignored: str = Field(default="", description="why a replayed or late event was not applied")
    timers_set: list[TimerOut]
    timers_cancelled: int


def _credential(got: agents.Credential) -> CredentialOut:
    """An enrolment's or a refresh's answer: the new token and the next refresh secret."""
    return CredentialOut(
        desktop_id=got.desktop_id,
        desktop_name=got.desktop_name,
        token=got.token,
        expires_at=got.expires_at,
        refresh_secret=got.refresh_secret,
    )


def _enrolled(got: agents.Credential | enrolments.Waiting) -> CredentialOut | JSONResponse:
    """A credential (200), or the handle of an enrolment held for an administrator (202)."""
    if isinstance(got, agents.Credential):
        return _credential(got)
    waiting = EnrolWaitingOut(
        pending_id=got.pending_id,
        poll_handle=got.poll_handle,
        retry_after_s=got.retry_after_s,
        detail=got.detail,
    )
    return JSONResponse(
        waiting.model_dump(), status_code=202, headers={"Retry-After": str(got.retry_after_s)}
    )


def router() -> APIRouter:
    r = APIRouter(prefix="/agent")

    @r.post(
        "/events",
        tags=["agent"],
        summary="Report a session event on this desktop",
        description="Login, logout, disconnect, reconnect, lock, unlock, idle, active. "
        "An event that cannot follow the session's state is refused with 409. A desktop "
        "reports at most DESKBROKER_AGENT_EVENTS_PER_MINUTE (60) events a minute to one "
        "broker process; more are refused with 429 and Retry-After, nothing recorded.",
        responses={
            401: {"description": "missing, expired or replaced agent token"},
            403: {"description": "not an agent token, or another desktop's"},
            409: {
                "description": "the event cannot follow the session's state, or a login "
                "beyond the sessions the desktop allows"
            },
            422: {"description": "a malformed body, an `at` too far from now"},
            429: {
                "description": "this desktop reported more than "
                "DESKBROKER_AGENT_EVENTS_PER_MINUTE events in the last minute; "
                "Retry-After says when one is heard again"
            },
        },
    )
    def post_event(body: AgentEventIn, ctx: Ctx, who: AgentPrincipal) -> AgentEventOut:
        desktop_id = sessions.agent_desktop(who, body.desktop_id)
        # Counted before anything is read or written: a copied token's flood must not
        # reach the database (each event writes rows and feeds the tenant's webhooks).
        with agent_rate.counted(ctx.agent_events, desktop_id, ctx.settings.agent_events_per_minute):
            outcome = sessions.record(
                ctx,
                desktop_id,
                body.event,
                agent=who,
                user=body.user,
                session_key=body.session_key,
                at=body.at,
                protocol=body.protocol,
                client_address=body.client_address,
                seq=body.seq,
                key=body.key,
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
            ignored=outcome.ignored,
        )

    @r.post(
        "/enrol",
        tags=["agent"],
        summary="Enrol this desktop's agent with its enrolment secret",
        description="Exchanges the single-use, short-lived secret the engine put into the "
        "instance metadata (or an administrator minted) for the desktop's agent token and "
        "refresh secret. A tenant's enrolment key is matched to the desktop by instance id, "
        "else by address; when that finds no desktop free of an agent, 202 with a poll "
        "handle.",
        response_model=CredentialOut,
        responses={
            202: {
                "model": EnrolWaitingOut,
                "description": "an enrolment key that matched no desktop (or one whose agent "
                "enrolled already): held for an administrator; poll with the handle",
            },
            401: {"description": "not a secret or key of this broker, expired, or used already"},
            403: {"description": "the secret is another instance's"},
            409: {"description": "too many enrolments wait for approval in the tenant"},
            422: {"description": "a malformed body"},
        },
    )
    def enrol(body: EnrolIn, ctx: Ctx) -> CredentialOut | JSONResponse:
        if enrolments.is_key(body.secret):
            return _enrolled(enrolments.enrol_with_key(ctx, body.secret, body.identity.identity()))
        got = agents.enrol(ctx, body.secret, body.identity.identity())
        return _credential(got)

    @r.post(
        "/enrol/poll",
        tags=["agent"],
        summary="Ask whether a held enrolment was approved",
        description="An agent whose enrolment key matched no desktop asks again with its "
        "poll handle: 202 while it waits, 200 with the credential once an administrator "
        "approved it (given once).",
        response_model=CredentialOut,
        responses={
            202: {"model": EnrolWaitingOut, "description": "still waiting for approval"},
            401: {"description": "not a poll handle of this broker"},
            403: {"description": "an administrator denied the enrolment"},
            410: {"description": "expired, or the credential was collected already"},
            422: {"description": "a malformed body"},
        },
    )
    def enrol_poll(body: PollIn, ctx: Ctx) -> CredentialOut | JSONResponse:
        return _enrolled(enrolments.poll(ctx, body.poll_handle))

    @r.post(
        "/token",
        tags=["agent"],
        summary="Replace an expired or revoked agent token",
        description="The refresh secret from enrolment (or the last refresh) buys a new "
        "token and a new refresh secret; the old ones stop working.",
        responses={401: {"description": "not the desktop's current refresh secret"}},
    )
    def refresh(body: RefreshIn, ctx: Ctx) -> CredentialOut:
        got = agents.refresh(ctx, body.desktop_id, body.refresh_secret)
        return _credential(got)

    @r.post(
        "/heartbeat",
        tags=["agent"],
        summary="Report that the agent lives; collect the actions waiting for it",
        description="Keeps the agent `running` (it becomes `lost` after "
        "DESKBROKER_AGENT_LOST_AFTER_S of silence), takes the outcomes of earlier "
        "actions, and answers with the desktop's holder and the next actions.",
        responses={
            401: {"description": "missing, expired or replaced agent token"},
            403: {"description": "not an agent token"},
            422: {"description": "a malformed body"},
        },
    )
    def heartbeat(body: HeartbeatIn, ctx: Ctx, who: AgentPrincipal) -> HeartbeatOut:
        beat = agents.heartbeat(
            ctx,
            who,
            body.identity.identity(),
            [agents.ActionResult(d.id, d.ok, d.detail) for d in body.done],
            body.queued,
        )
        return HeartbeatOut(
            desktop_id=beat.desktop_id,
            assigned_user=beat.assigned_user,
            actions=[
                ActionOut(id=a.id, kind=a.kind, session_key=a.session_key, message=a.message)
                for a in beat.actions
            ],
            heartbeat_s=beat.heartbeat_s,
            token=beat.token,
            expires_at=beat.expires_at,
        )

    return r

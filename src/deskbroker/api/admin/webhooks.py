"""Events out over HTTP: webhooks (create, list, change, delete), their deliveries, a
test event and a retry of failed ones; the event stream (server-sent events) and the
monthly usage report. docs/events.md is the operator's and receiver's side."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field, StringConstraints

from deskbroker.api.admin.crud import MAX_OFFSET, ResourceSpec, add_routes
from deskbroker.api.deps import AdminReader, AdminWriter, Ctx
from deskbroker.api.schemas import Body, Id, Name, Stamped
from deskbroker.api.stream_slots import HeldStream, StreamSlots
from deskbroker.domain.webhooks import Category, DeliveryState
from deskbroker.services import webhooks

Url = Annotated[str, StringConstraints(min_length=1, max_length=2000, strip_whitespace=True)]
Secret = Annotated[str, StringConstraints(min_length=16, max_length=200)]
Kinds = Annotated[list[Category], Field(min_length=1, max_length=len(Category))]

# How often an open stream looks for new events, and sends a comment line when there
# were none for a while (so proxies keep the connection open).
STREAM_POLL_S = 0.5
STREAM_KEEPALIVE_S = 15.0
# How often an open stream checks that its caller may still read events.
STREAM_RECHECK_S = 5.0
# The event streams open in this worker (every app of the process shares the router).
SLOTS = StreamSlots()


class WebhookIn(Body):
    """Creating a webhook needs `events:read` as well: it delivers the event log."""

    name: Name
    url: Url = Field(description="http(s) URL the events are posted to")
    kinds: Kinds = Field(description="the event kinds this webhook receives")
    secret: Secret = Field(
        description="write-only; the key of the deliveries' HMAC-SHA256 signature, "
        "encrypted at rest, never returned"
    )
    enabled: bool = True
    max_attempts: int = Field(default=8, ge=1, le=30, description="attempts before failed")
    tenant_id: Id | None = None


class WebhookPatch(Body):
    """Changing a webhook needs `events:read` as well: it decides where events go. A
    webhook whose setter is stronger than the caller is theirs: refused (403)."""

    name: Name | None = None
    url: Url | None = Field(default=None, description="a new url needs a new secret with it")
    kinds: Kinds | None = None
    secret: Secret | None = Field(default=None, description="write-only; rotates the secret")
    enabled: bool | None = None
    max_attempts: int | None = Field(default=None, ge=1, le=30)


class WebhookOut(Stamped):
    name: str
    url: str
    kinds: list[str]
    has_secret: bool
    enabled: bool
    max_attempts: int
    set_by_user_id: str | None = Field(
        description="the user who last created or changed it; it is switched off once they "
        "are deleted, disabled or may no longer read events, and no account weaker than "
        "them changes, deletes, tests or retries it (null: made before this was recorded, "
        "never switched off for it, anyone's to change)"
    )


class DeliveryOut(BaseModel):
    id: str
    tenant_id: str
    webhook_id: str
    event_id: int
    kind: str
    payload: dict[str, Any] = Field(description="the body posted (its id deduplicates)")
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime
    lease_expires_at: datetime | None = Field(description="set while a post is under way")
    last_status: int | None = Field(description="the receiver's last HTTP status")
    last_error: str
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    total: int
    limit: int
    offset: int


class Queued(BaseModel):
    webhook_id: str
    message: str


class Requeued(BaseModel):
    webhook_id: str
    requeued: int


class UsageRow(BaseModel):
    tenant_id: str
    tenant: str
    month: str
    sessions: int = Field(description="sessions open at some moment of the month")
    session_hours: float = Field(description="the sessions' time within the month")
    desktop_hours: float = Field(
        description="per desktop, the time at least one session was open on it, summed"
    )
    desktops: int = Field(description="desktops that had a session")
    peak_concurrent_sessions: int
    peak_at: datetime | None = Field(description="the first moment of the peak")


class UsageOut(BaseModel):
    month: str
    items: list[UsageRow] = Field(description="one row per tenant")


SPEC = ResourceSpec(
    path="webhooks",
    resource=webhooks.WEBHOOKS,
    read=WebhookOut,
    create=WebhookIn,
    update=WebhookPatch,
    filters={"name": str, "enabled": bool},
)


def _sse(event: dict[str, Any]) -> str:
    return f"id: {event['id']}\nevent: {event['kind']}\ndata: {json.dumps(event)}\n\n"


def router() -> APIRouter:
    r = APIRouter()
    add_routes(r, SPEC)

    @r.get(
        "/webhooks/{webhook_id}/deliveries",
        tags=["webhooks"],
        summary="A webhook's recent deliveries",
        description="Newest event first, with their state (`pending`, `delivered`, "
        "`failed` after `max_attempts`), attempts, the receiver's last status and error. "
        "The deliveries carry the events, so this needs `events:read` as well.",
    )
    def list_webhook_deliveries(
        webhook_id: str,
        ctx: Ctx,
        who: AdminReader,
        state: DeliveryState | None = None,
        limit: int = Query(50, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
    ) -> DeliveryPage:
        items, total = webhooks.deliveries(
            ctx, who, webhook_id, state=state, limit=limit, offset=offset
        )
        return DeliveryPage(
            items=[DeliveryOut(**i) for i in items], total=total, limit=limit, offset=offset
        )

    @r.post(
        "/webhooks/{webhook_id}/test",
        tags=["webhooks"],
        status_code=202,
        summary="Send a test event",
        description="Appends a `webhook.test` event for this webhook only; it is "
        "delivered, signed and retried like any other. It goes where the webhook's events "
        "go, so this needs `events:read` as well, and standing over the webhook's setter "
        "(403 for a stronger account's webhook: test events would queue in front of its "
        "events). One test event per webhook every 10 seconds is accepted (per HTTP "
        "worker); another one sooner is 429 with Retry-After.",
    )
    def test_webhook(webhook_id: str, ctx: Ctx, who: AdminWriter) -> Queued:
        return Queued(**webhooks.send_test(ctx, who, webhook_id))

    @r.post(
        "/webhooks/{webhook_id}/retry",
        tags=["webhooks"],
        summary="Try failed deliveries again",
        description="Every failed delivery of the webhook pending again from its first "
        "attempt (once its receiver is back). The deliveries carry the events, so this "
        "needs `events:read` as well, and standing over the webhook's setter (403 for a "
        "stronger account's webhook: requeued events would stand in front of its new "
        "ones).",
    )
    def retry_webhook(webhook_id: str, ctx: Ctx, who: AdminWriter) -> Requeued:
        return Requeued(**webhooks.retry_failed(ctx, who, webhook_id))

    @r.get(
        "/event-stream",
        tags=["events"],
        summary="The event stream (server-sent events)",
        description="`text/event-stream` of the events webhooks can choose, of the "
        "caller's tenant: each with `id` (the event id), `event` (its kind) and `data` "
        "(the same JSON a webhook receives). Resume with the `Last-Event-ID` header. "
        "The stream ends after `max_s` seconds, or when the caller's token expires if "
        "that comes first; clients reconnect (with a fresh token) and the last id.",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
        openapi_extra={"x-permission": "events:read"},
    )
    async def event_stream(
        request: Request,
        ctx: Ctx,
        who: AdminReader,
        kinds: list[Category] = Query([], description="only these kinds (none: all)"),
        max_s: float = Query(300, ge=0, le=3600, description="end the stream after this"),
        last_event_id: str | None = Header(None, max_length=20),
    ) -> StreamingResponse:
        wanted = webhooks.check_kinds([k.value for k in kinds])
        start = await run_in_threadpool(webhooks.stream_start, ctx, last_event_id)
        # Taken before the answer starts, so a refusal is a plain 429.
        SLOTS.take(
            who.tenant_id,
            per_tenant=ctx.settings.event_streams_per_tenant,
            in_all=ctx.settings.event_streams,
        )

        async def lines() -> AsyncIterator[str]:
            after = start
            # The id first: a client that reconnects before any event resumes from here.
            yield f"retry: 2000\nid: {start}\n\n"
            # Not past the caller's token: a request after it would be refused too.
            ends = time.monotonic() + min(max_s, max(0.0, who.expires_at - time.time()))
            quiet_since = time.monotonic()
            checked = time.monotonic()
            while True:
                if time.monotonic() - checked > STREAM_RECHECK_S:
                    checked = time.monotonic()
                    if not await run_in_threadpool(webhooks.stream_still_allowed, ctx, who):
                        return  # demoted, disabled or revoked: the stream ends
                batch, after = await run_in_threadpool(
                    webhooks.stream_batch, ctx, who, after, wanted
                )
                for event in batch:
                    yield _sse(event)
                if batch:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > STREAM_KEEPALIVE_S:
                    quiet_since = time.monotonic()
                    yield ": keep-alive\n\n"
                if time.monotonic() >= ends or await request.is_disconnected():
                    return
                await asyncio.sleep(min(STREAM_POLL_S, max(0.0, ends - time.monotonic())))

        return HeldStream(
            lines(),
            lambda: SLOTS.give_back(who.tenant_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @r.get(
        "/usage",
        tags=["usage"],
        summary="Usage per tenant and month",
        description="Session hours, desktop hours and peak concurrent sessions of a "
        "month (UTC), from the sessions the agents reported: the caller's tenant, or for "
        "a global admin every tenant (or `tenant_id`). `format=csv` answers CSV.",
        responses={200: {"content": {"text/csv": {}}}},
    )
    def get_usage(
        ctx: Ctx,
        who: AdminReader,
        month: str | None = Query(
            None, min_length=7, max_length=7, description="YYYY-MM (default: this month)"
        ),
        tenant_id: str | None = Query(None, max_length=64),
        format: str = Query("json", pattern="^(json|csv)$"),
    ) -> Any:
        month = month or webhooks.this_month()
        rows = webhooks.usage(ctx, who, month, tenant_id)
        if format == "csv":
            return PlainTextResponse(
                webhooks.usage_csv(rows),
                media_type="text/csv",
                headers={"Content-Disposition": f'attachment; filename="usage-{month}.csv"'},
            )
        return UsageOut(month=month, items=[UsageRow(**row) for row in rows])

    return r

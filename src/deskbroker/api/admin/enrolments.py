"""Admin side of tenant enrolment keys and the agent enrolments held for approval."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from deskbroker.api.admin.crud import MAX_OFFSET, scope
from deskbroker.api.deps import AdminReader, AdminWriter, Ctx
from deskbroker.api.schemas import Body, Id, Name, Text
from deskbroker.domain.states import EnrolmentState
from deskbroker.services import enrolments


class EnrolmentKeyIn(Body):
    name: Name
    expires_in_days: int | None = Field(
        default=None, ge=1, le=3660, description="none: valid until revoked"
    )
    tenant_id: Id | None = None


class EnrolmentKeyOut(BaseModel):
    id: str
    tenant_id: str
    name: str
    prefix: str = Field(description="the key's first characters, to tell keys apart")
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class EnrolmentKeyMade(EnrolmentKeyOut):
    key: str = Field(description="the agents' enrolment_token; shown this once, never again")


class EnrolmentKeyPage(BaseModel):
    items: list[EnrolmentKeyOut]
    total: int


class PendingEnrolmentOut(BaseModel):
    id: str
    tenant_id: str
    key_id: str
    state: EnrolmentState
    identity: dict[str, Any] = Field(description="what the agent said of its machine")
    desktop_id: str | None
    reason: str = Field(description="why it waits, or why it was denied")
    decided_by: str
    created_at: datetime
    decided_at: datetime | None
    expires_at: datetime


class PendingEnrolmentPage(BaseModel):
    items: list[PendingEnrolmentOut]
    total: int
    limit: int
    offset: int


class ApproveIn(Body):
    desktop_id: Id = Field(description="the desktop (of the enrolment's tenant) it is the agent of")


class DenyIn(Body):
    reason: Text = ""


def _key(view: enrolments.KeyView) -> dict[str, Any]:
    return {
        "id": view.id,
        "tenant_id": view.tenant_id,
        "name": view.name,
        "prefix": view.prefix,
        "created_by": view.created_by,
        "created_at": view.created_at,
        "expires_at": view.expires_at,
        "revoked_at": view.revoked_at,
    }


def _pending(view: enrolments.PendingView) -> PendingEnrolmentOut:
    return PendingEnrolmentOut(
        id=view.id,
        tenant_id=view.tenant_id,
        key_id=view.key_id,
        state=EnrolmentState(view.state),
        identity=view.identity,
        desktop_id=view.desktop_id,
        reason=view.reason,
        decided_by=view.decided_by,
        created_at=view.created_at,
        decided_at=view.decided_at,
        expires_at=view.expires_at,
    )


def router() -> APIRouter:
    r = APIRouter()

    @r.post(
        "/enrolment-keys",
        tags=["agents"],
        status_code=201,
        summary="Mint a tenant enrolment key for agents (shown once)",
        description="For machines the broker did not build: an agent with this key as its "
        "enrolment_token is matched to its desktop by instance id or address, or waits for "
        "approval (GET /admin/pending-enrolments). Only a hash is kept.",
    )
    def create_key(body: EnrolmentKeyIn, ctx: Ctx, who: AdminWriter) -> EnrolmentKeyMade:
        minted = enrolments.mint_key(
            ctx, body.tenant_id or who.tenant_id, body.name, body.expires_in_days, who
        )
        return EnrolmentKeyMade(**_key(minted.view), key=minted.key)

    @r.get("/enrolment-keys", tags=["agents"], summary="Enrolment keys (never the keys)")
    def list_keys(ctx: Ctx, who: AdminReader) -> EnrolmentKeyPage:
        items = [EnrolmentKeyOut(**_key(k)) for k in enrolments.list_keys(ctx, scope(who))]
        return EnrolmentKeyPage(items=items, total=len(items))

    @r.delete(
        "/enrolment-keys/{key_id}",
        tags=["agents"],
        status_code=204,
        summary="Revoke an enrolment key",
        description="It enrols nothing more and the enrolments waiting under it are "
        "denied; agents that enrolled with it keep working.",
    )
    def revoke_key(key_id: str, ctx: Ctx, who: AdminWriter) -> Response:
        enrolments.revoke_key(ctx, key_id, scope(who), who.username)
        return Response(status_code=204)

    @r.get(
        "/pending-enrolments",
        tags=["agents"],
        summary="Agent enrolments held for an administrator",
    )
    def list_pending(
        ctx: Ctx,
        who: AdminReader,
        state: EnrolmentState | None = None,
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
    ) -> PendingEnrolmentPage:
        items, total = enrolments.list_pending(ctx, scope(who), state, limit, offset)
        return PendingEnrolmentPage(
            items=[_pending(v) for v in items], total=total, limit=limit, offset=offset
        )

    @r.post(
        "/pending-enrolments/{pending_id}/approve",
        tags=["agents"],
        summary="Approve a held enrolment as the agent of a desktop",
        description="The agent collects the desktop's credential at its next poll; the "
        "desktop's current agent, if any, is replaced then.",
    )
    def approve(
        pending_id: str, body: ApproveIn, ctx: Ctx, who: AdminWriter
    ) -> PendingEnrolmentOut:
        return _pending(enrolments.approve(ctx, pending_id, body.desktop_id, scope(who), who))

    @r.post(
        "/pending-enrolments/{pending_id}/deny",
        tags=["agents"],
        summary="Deny a held enrolment",
    )
    def deny(pending_id: str, body: DenyIn, ctx: Ctx, who: AdminWriter) -> PendingEnrolmentOut:
        return _pending(enrolments.deny(ctx, pending_id, body.reason, scope(who), who.username))

    return r

"""GET /admin/quota: a tenant's limits and what it uses, for its own admins too."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from deskbroker.api.deps import AdminReader, Ctx
from deskbroker.services.tenant_quota import quota_of


class Usage(BaseModel):
    limit: int | None
    used: int


class QuotaOut(BaseModel):
    tenant_id: str
    tenant_name: str
    desktops: Usage
    sessions: Usage
    summary: str


def router() -> APIRouter:
    r = APIRouter()

    @r.get(
        "/quota",
        tags=["tenants"],
        response_model=QuotaOut,
        summary="The tenant's quotas and usage",
        description=(
            "Desktops (every desktop not deleted, including ones being built) and concurrent "
            "sessions (open sessions plus connects whose session the agent has not reported "
            "yet) against the tenant's limits; a null limit is unlimited. Any administrator "
            "sees their own tenant; a global administrator may name another with tenant_id. "
            "Only a global administrator changes quotas (PATCH /admin/tenants/{id})."
        ),
    )
    def get_quota(ctx: Ctx, who: AdminReader, tenant_id: str | None = None) -> dict[str, Any]:
        return quota_of(ctx, who, tenant_id)

    return r

"""Admin resources for pools and their status, members and queue."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import (
    BaseModel,
    Field,
)

from deskbroker.api.admin.crud import ResourceSpec, add_routes, scope
from deskbroker.api.deps import AdminReader, Ctx
from deskbroker.api.schemas import Body, Id, Name, Stamped, Text
from deskbroker.domain.membership import FilterSpec
from deskbroker.domain.provisioning import Provisioning, ProvisioningParameters
from deskbroker.services import pool_catalog, pool_preview


class PoolIn(Body):
    name: Name
    description: Text = ""
    center_ids: list[Id] = Field(default_factory=list, max_length=100)
    filters: list[FilterSpec] = Field(default_factory=list, max_length=50)
    desktop_ids: list[Id] = Field(default_factory=list, max_length=10000)
    parent_pool_id: Id | None = None
    provisioning: Provisioning = Field(default_factory=Provisioning)
    tenant_id: Id | None = None


class PoolPatch(Body):
    name: Name | None = None
    description: Text | None = None
    center_ids: list[Id] | None = Field(default=None, max_length=100)
    filters: list[FilterSpec] | None = Field(default=None, max_length=50)
    desktop_ids: list[Id] | None = Field(default=None, max_length=10000)
    parent_pool_id: Id | None = None
    provisioning: Provisioning | None = None


class PoolOut(Stamped):
    name: str
    description: str
    center_ids: list[str]
    filters: list[dict[str, Any]]
    desktop_ids: list[str]
    parent_pool_id: str | None
    provisioning: dict[str, Any]
    status: str
    status_message: str
    last_error: str
    drained_at: datetime | None = Field(
        default=None, description="since when no login gets a desktop from it (null: not drained)"
    )


class PoolPreviewIn(PoolIn):
    pool_id: Id | None = Field(
        default=None,
        description="the pool this definition would replace (an edit); in the tenant the "
        "definition is read in (tenant_id for a global administrator's other tenant)",
    )


class PreviewDesktopOut(BaseModel):
    id: str
    name: str
    power_state: str
    availability: str
    user: str | None = Field(description="who holds it")
    other_pools: list[str] = Field(description="the other pools it belongs to now")


class PoolPreviewOut(BaseModel):
    tenant_id: str
    total: int = Field(description="desktops the pool would hold")
    assigned: int
    free: int = Field(description="desktops a login could be given")
    shared: int = Field(description="of them, desktops another pool holds too")
    desktops: list[PreviewDesktopOut] = Field(description=f"the first {pool_preview.SHOWN} by name")
    users: list[str] = Field(description="who holds its desktops")
    min_unassigned: int | None = Field(description="the limits now, when it provisions")
    max_total: int | None
    to_create: int = Field(description="desktops the broker would start building at once")
    to_retire: int = Field(description="free desktops it would remove (above max_total)")
    summary: str = Field(description="all of it in a few sentences")


SPEC: ResourceSpec[Any] = ResourceSpec(
    path="pools",
    resource=pool_catalog.pools_resource(ProvisioningParameters.model_fields),
    read=PoolOut,
    create=PoolIn,
    update=PoolPatch,
    filters={"name": str, "parent_pool_id": str},
)


def router() -> APIRouter:
    r = APIRouter()

    @r.post(
        "/pools/preview",
        tags=["pools"],
        summary="What a pool definition would take, before saving it",
        description="The body is a pool as created (and `pool_id` for an edit). Checked as "
        "saving it would be; nothing is written. Answers which desktops and users the pool "
        "would take, which of them other pools hold too, and what provisioning would do now.",
        openapi_extra={"x-permission": "pools:read"},
    )
    def preview_pool(body: PoolPreviewIn, ctx: Ctx, who: AdminReader) -> PoolPreviewOut:
        data = body.model_dump(exclude={"pool_id"}, exclude_unset=False)
        seen = pool_preview.preview(
            ctx, who, data, body.pool_id, ProvisioningParameters.model_fields
        )
        return PoolPreviewOut(
            tenant_id=seen.tenant_id,
            total=seen.total,
            assigned=seen.assigned,
            free=seen.free,
            shared=seen.shared,
            desktops=[
                PreviewDesktopOut(
                    id=d.id,
                    name=d.name,
                    power_state=d.power_state,
                    availability=d.availability,
                    user=d.user,
                    other_pools=d.other_pools,
                )
                for d in seen.desktops
            ],
            users=seen.users,
            min_unassigned=seen.min_unassigned,
            max_total=seen.max_total,
            to_create=seen.to_create,
            to_retire=seen.to_retire,
            summary=seen.summary,
        )

    add_routes(r, SPEC)

    @r.get("/pools/{pool_id}/status", tags=["pools"], summary="Pool status in numbers and words")
    def get_pool_status(pool_id: str, ctx: Ctx, who: AdminReader) -> dict[str, Any]:
        return pool_catalog.status(ctx, pool_id, scope(who))

    @r.get("/pools/{pool_id}/members", tags=["pools"], summary="Desktops in a pool")
    def get_pool_members(pool_id: str, ctx: Ctx, who: AdminReader) -> dict[str, Any]:
        members = pool_catalog.members(ctx, pool_id, scope(who))
        return {
            "pool_id": pool_id,
            "items": [
                {
                    "id": m.id,
                    "name": m.name,
                    "power_state": m.power_state,
                    "assigned_user_id": m.assigned_user_id,
                }
                for m in members
            ],
        }

    @r.get("/pools/{pool_id}/queue", tags=["pools"], summary="Users waiting for a pool")
    def get_pool_queue(pool_id: str, ctx: Ctx, who: AdminReader) -> dict[str, Any]:
        waiting = pool_catalog.queue(ctx, pool_id, scope(who))
        return {
            "pool_id": pool_id,
            "items": [
                {
                    "position": w.position,
                    "user_id": w.user_id,
                    "username": w.username,
                    "since": w.since.isoformat(),
                }
                for w in waiting
            ],
        }

    return r

"""What a center offers the admin's pickers: images, flavors, networks, zones, groups."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from deskbroker.api.admin.crud import scope
from deskbroker.api.deps import AdminReader, Ctx
from deskbroker.services.center_catalog import center_catalog


def router() -> APIRouter:
    r = APIRouter()

    @r.get(
        "/centers/{center_id}/catalog",
        tags=["centers"],
        summary="Images, flavors, networks, zones and security groups of a center",
    )
    def get_catalog(center_id: str, ctx: Ctx, who: AdminReader) -> dict[str, Any]:
        return center_catalog(ctx, center_id, scope(who))

    return r

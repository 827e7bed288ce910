"""What a center offers the admin's pickers: images, flavors, networks, zones, groups."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter

from deskbroker.api.admin.crud import scope
from deskbroker.api.deps import AdminReader, Ctx
from deskbroker.services.inventory import catalog
from deskbroker.store.repository import Repository
from deskbroker.store.tables import Center


def router() -> APIRouter:
    r = APIRouter()

    @r.get(
        "/centers/{center_id}/catalog",
        tags=["centers"],
        summary="Images, flavors, networks, zones and security groups of a center",
    )
    def get_catalog(center_id: str, ctx: Ctx, who: AdminReader) -> dict[str, Any]:
        with ctx.db.read() as session:
            center = Repository(Center, "center").get(session, center_id, scope(who))
            session.expunge(center)
        return ctx.sources.tenant_call(
            center.tenant_id, "list the center's catalog", partial(catalog, ctx, center)
        )

    return r

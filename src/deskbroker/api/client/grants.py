"""What the caller may do: the portal and the console show only the buttons it allows."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from deskbroker.api.admin.engine import SPECS as ENGINE_SPECS
from deskbroker.api.deps import Ctx, Principal
from deskbroker.api.permissions import catalog
from deskbroker.services import access

# Resources only a global administrator reaches, whatever a role's grants say (the
# routes refuse everyone else): not offered to anyone else.
GLOBAL_ONLY = frozenset(spec.path for spec in ENGINE_SPECS if spec.resource.global_only)


class GrantsOut(BaseModel):
    username: str
    role: str
    tenant_id: str
    permissions: list[str] = Field(
        description="every `resource:action` of the admin API the caller's role allows "
        "(none for a plain user); resources only a global administrator reaches (jobs) "
        "are left out for everyone else"
    )


def router() -> APIRouter:
    r = APIRouter()

    @r.get(
        "/client/grants",
        tags=["client"],
        summary="What you may do",
        description="The admin operations your role allows, as the permission each "
        "operation of the admin API names (`x-permission`). The console shows a button "
        "only when its operation is listed here; the API checks again on every call.",
    )
    def my_grants(ctx: Ctx, who: Principal) -> GrantsOut:
        held = access.effective(ctx, who).expand(catalog())
        if who.role != "global_admin":
            held = {(r, a) for r, a in held if r not in GLOBAL_ONLY}
        return GrantsOut(
            username=who.username,
            role=who.role,
            tenant_id=who.tenant_id,
            permissions=sorted(f"{r}:{a}" for r, a in held),
        )

    return r

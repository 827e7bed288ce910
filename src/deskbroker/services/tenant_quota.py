"""A tenant's quotas and usage as its administrators see them (``GET /admin/quota``)."""

from __future__ import annotations

from typing import Any

from deskbroker.errors import Forbidden, NotFound
from deskbroker.security import TokenClaims
from deskbroker.services import quotas
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Tenant


def quota_of(ctx: BrokerContext, who: TokenClaims, tenant_id: str | None) -> dict[str, Any]:
    """The limits and usage of the caller's tenant, or of ``tenant_id`` for a global
    administrator."""
    wanted = tenant_id or who.tenant_id
    if wanted != who.tenant_id and who.role != "global_admin":
        raise Forbidden("you can only see your own tenant's quota")
    with ctx.db.read() as session:
        tenant = session.get(Tenant, wanted)
        if tenant is None:
            raise NotFound(f"tenant {wanted} does not exist")
        return {"tenant_name": tenant.name, **quotas.usage(session, ctx, tenant.id)}

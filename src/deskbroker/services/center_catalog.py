"""What a center offers the admin's pickers (images, flavors, networks, zones, security
groups), asked of the center itself with no unit of work open."""

from __future__ import annotations

from functools import partial
from typing import Any

from deskbroker.services.context import BrokerContext
from deskbroker.services.inventory import catalog
from deskbroker.store.repository import Repository
from deskbroker.store.tables import Center


def center_catalog(ctx: BrokerContext, center_id: str, tenant_id: str | None) -> dict[str, Any]:
    """The pickers of a center an administrator of ``tenant_id`` (None: every tenant) may
    see; the call counts against the tenant's share of request threads."""
    with ctx.db.read() as session:
        center = Repository(Center, "center").get(session, center_id, tenant_id)
        session.expunge(center)
    return ctx.sources.tenant_call(
        center.tenant_id, "list the center's catalog", partial(catalog, ctx, center)
    )

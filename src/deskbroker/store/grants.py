"""A tenant's custom roles as the grant checks read them."""

from __future__ import annotations

from sqlalchemy import select

from deskbroker.store.db import Unit
from deskbroker.store.tables import CustomRole


def custom_role_grants(session: Unit, tenant_id: str, name: str) -> list[str] | None:
    """The permissions of the tenant's custom role ``name``; ``None`` if it has none."""
    grants = session.scalar(
        select(CustomRole.permissions).where(
            CustomRole.tenant_id == tenant_id, CustomRole.name == name
        )
    )
    return None if grants is None else list(grants)


def custom_role_names(session: Unit, tenant_id: str) -> list[str]:
    """The names of the tenant's custom roles."""
    return list(session.scalars(select(CustomRole.name).where(CustomRole.tenant_id == tenant_id)))

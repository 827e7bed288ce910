"""Questions about the accounts a tenant holds, asked off the login's budget: whether a
typed name is somebody's, whether the tenant holds a global administrator, and the
first-run lookups of a tenant, its local source and a local user."""

from __future__ import annotations

from sqlalchemy import and_, or_, select

from deskbroker.domain.permissions import BuiltinRole
from deskbroker.store.claims import folded_name
from deskbroker.store.db import Unit
from deskbroker.store.tables import IdentitySource, Tenant, User


def is_account_name(
    session: Unit, tenant_id: str, name: str, bare: str, domain: str | None
) -> bool:
    """Whether ``name`` is a user of the tenant in any letter case, or (``domain`` given)
    ``bare`` is a user of a source of that domain (or one below it). One indexed read."""
    query = select(User.id).where(User.tenant_id == tenant_id)
    if domain is None:
        query = query.where(folded_name(name))
    else:
        of_domain = or_(
            IdentitySource.domain == domain,
            IdentitySource.domain.startswith(domain + ".", autoescape=True),
        )
        query = query.join(IdentitySource, IdentitySource.id == User.identity_source_id).where(
            or_(folded_name(name), and_(folded_name(bare), of_domain))
        )
    return session.scalar(query.limit(1)) is not None


def holds_global_admin(session: Unit, tenant_id: str) -> bool:
    """Whether any user of the tenant has the global administrator role."""
    query = select(User.id).where(
        User.tenant_id == tenant_id, User.role == BuiltinRole.GLOBAL_ADMIN.value
    )
    return session.scalar(query.limit(1)) is not None


def tenant_named(session: Unit, name: str) -> Tenant | None:
    """The tenant called ``name``."""
    return session.scalars(select(Tenant).where(Tenant.name == name)).first()


def tenant_id_named(session: Unit, name: str) -> str | None:
    """The id of the tenant called ``name``."""
    return session.scalar(select(Tenant.id).where(Tenant.name == name))


def local_source(session: Unit, tenant_id: str) -> IdentitySource | None:
    """The tenant's (first) local identity source."""
    return session.scalars(
        select(IdentitySource).where(
            IdentitySource.tenant_id == tenant_id, IdentitySource.kind == "local"
        )
    ).first()


def user_named(session: Unit, identity_source_id: str, username: str) -> User | None:
    """The user of that source with exactly that name."""
    return session.scalars(
        select(User).where(User.identity_source_id == identity_source_id, User.username == username)
    ).first()

"""First-run set-up: the default tenant, the local identity source, an admin."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from deskbroker.services.context import BrokerContext
from deskbroker.store import accounts, events
from deskbroker.store.config_version import bump_config_version
from deskbroker.store.migrate import upgrade
from deskbroker.store.tables import IdentitySource, Tenant, User

log = logging.getLogger("deskbroker.schema")


@dataclass(frozen=True)
class Defaults:
    tenant_id: str
    local_source_id: str


def ensure_defaults(ctx: BrokerContext, tenant_name: str = "default") -> Defaults:
    """Migrate, then make sure a tenant and its local identity source exist (idempotent)."""
    outcome = upgrade(ctx.db)
    if outcome.ahead:
        log.warning(
            "the database schema (%s) is newer than this node knows: a newer node migrated "
            "it; this node runs on it as it is (expand migrations keep it compatible)",
            outcome.revision,
        )
    if outcome.contract_pending:
        log.info(
            "contract migrations wait for `deskbroker db upgrade --contract`: %s",
            ", ".join(outcome.contract_pending),
        )
    with ctx.db.write() as session:
        tenant = accounts.tenant_named(session, tenant_name)
        if tenant is None:
            tenant = Tenant(name=tenant_name, display_name=tenant_name.title())
            session.add(tenant)
            session.flush()
        source = accounts.local_source(session, tenant.id)
        if source is None:
            source = IdentitySource(tenant_id=tenant.id, name="local", kind="local", params={})
            session.add(source)
            session.flush()
            bump_config_version(session, tenant.id)
        return Defaults(tenant.id, source.id)


def add_local_user(
    ctx: BrokerContext,
    username: str,
    password: str,
    *,
    role: str = "user",
    tenant_name: str = "default",
    groups: list[str] | None = None,
) -> str:
    """Create or reset a local user; returns the user id."""
    defaults = ensure_defaults(ctx, tenant_name)
    with ctx.db.write() as session:
        user = accounts.user_named(session, defaults.local_source_id, username)
        if user is None:
            user = User(
                tenant_id=defaults.tenant_id,
                identity_source_id=defaults.local_source_id,
                username=username,
                groups=groups or [],
                attributes={},
            )
            session.add(user)
        else:
            # A reset (password, role): the user's tokens stop working.
            user.token_generation = (user.token_generation or 0) + 1
        user.password_hash = ctx.hashing.hash(password)
        user.role = role
        if groups is not None:
            user.groups = groups
        session.flush()
        events.append(
            session,
            "admin.create",
            tenant_id=defaults.tenant_id,
            actor="cli",
            user_id=user.id,
            detail={"resource": "users", "name": username},
        )
        return user.id

"""Who may do what: roles to permissions, API tokens to their user, and no escalation.

Built-in roles are fixed (``domain.permissions.BUILTIN``); a custom role is a tenant's
own set of grants, read through the configuration cache so a change reaches every broker
within seconds. An API token acts as its user with the user's *current* role, narrowed
to the token's scopes; it is looked up on every use, so revoking it, expiring it or
disabling its user takes effect on the next request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import timedelta

from deskbroker.domain.permissions import BUILTIN, BuiltinRole, Permissions
from deskbroker.domain.timestamps import aware
from deskbroker.errors import Forbidden, InvalidInput, Unauthorized
from deskbroker.security import TokenClaims
from deskbroker.services.context import BrokerContext
from deskbroker.store import grants as custom_roles
from deskbroker.store import holders
from deskbroker.store.db import Unit
from deskbroker.store.tables import utcnow

Catalog = Mapping[str, frozenset[str]]
# A token's last use is written at most this often: not a write per request.
LAST_USED_EVERY = timedelta(minutes=1)


def role_permissions(ctx: BrokerContext, tenant_id: str, role: str) -> Permissions | None:
    """The grants of a built-in role or of the tenant's custom role; ``None`` if unknown."""
    builtin = BUILTIN.get(role)
    if builtin is not None:
        return builtin
    grants = ctx.cache.current(ctx.db).roles.get((tenant_id, role))
    return None if grants is None else Permissions.of(grants)


def effective(ctx: BrokerContext, who: TokenClaims) -> Permissions:
    """What the holder of a verified token may do: its role, narrowed by its scopes."""
    found = role_permissions(ctx, who.tenant_id, who.role) or Permissions(())
    if who.scopes is not None:
        # Scopes were checked against the role when the token was made; the role may have
        # shrunk since, so the two are both applied on every use.
        found = found.narrowed(Permissions.of(who.scopes))
    return found


def authorize(ctx: BrokerContext, who: TokenClaims, permission: str) -> None:
    """Refuse, in words, an operation the holder's role (and token scopes) do not allow."""
    resource, _, action = permission.partition(":")
    role_grants = role_permissions(ctx, who.tenant_id, who.role)
    if role_grants is None or role_grants.empty:
        raise Forbidden(
            "This needs an administrator, helpdesk or auditor role, or a custom role that "
            f"allows {permission}; your role is {who.role}."
        )
    if not role_grants.allows(resource, action):
        raise Forbidden(f"Your role {who.role} does not allow {permission}.")
    if who.scopes is not None and not Permissions.of(who.scopes).allows(resource, action):
        raise Forbidden(
            f"This API token's scopes ({', '.join(who.scopes) or 'none'}) do not include "
            f"{permission}."
        )


def resolve_api_token(ctx: BrokerContext, who: TokenClaims) -> TokenClaims:
    """An API token's claims with its user's current role and the token's scopes."""
    now = utcnow()
    with ctx.db.read() as session:
        row = holders.api_token_holder(session, who.token_id, who.user_id)
    if row is None or row.revoked_at is not None:
        raise Unauthorized("This API token has been revoked; ask for a new one.")
    if aware(row.expires_at) <= now:
        raise Unauthorized("This API token has expired; ask for a new one.")
    if row.disabled:
        raise Unauthorized("The account this API token acts for is disabled.")
    if row.last_used_at is None or now - aware(row.last_used_at) > LAST_USED_EVERY:
        with ctx.db.write() as session:
            holders.note_api_token_use(session, who.token_id, now)
    return replace(who, role=str(row.role), tenant_id=str(row.tenant_id), scopes=tuple(row.scopes))


# Why a user token no longer works, in words for the person holding it.
REVOKED = (
    "This session token was revoked: you logged out, or an administrator changed your "
    "account (password, role or access). Log in again."
)
ACCOUNT_GONE = "The account this session token belongs to no longer exists."
ACCOUNT_DISABLED = "Your account is disabled, so this session token no longer works."


def check_holder(
    who: TokenClaims, disabled: bool, role: str, generation: int, tenant_id: str
) -> None:
    """Refuse a user token whose user row (read by the caller, perhaps within a statement
    the request makes anyway) says it is revoked: a newer generation (logout, new
    password, role change, disabled), a disabled account, or another role or tenant."""
    if disabled:
        raise Unauthorized(ACCOUNT_DISABLED, reason="account_disabled")
    # A role from an assignment rule rides on a stored role of ``user``.
    role_moved = role != BuiltinRole.USER.value and role != who.role
    if generation != who.generation or role_moved or tenant_id != who.tenant_id:
        raise Unauthorized(REVOKED, reason="token_revoked")


def current_holder(ctx: BrokerContext, who: TokenClaims) -> TokenClaims:
    """A user token checked against its user row: one read on every request."""
    with ctx.db.read() as session:
        check_current(session, who)
    return who


def check_current(session: Unit, who: TokenClaims) -> None:
    """``current_holder`` inside the caller's unit of work: a route taking the
    token's signature alone (``signed_principal``) reads the user row first thing in its
    own transaction, which spares the request a transaction of its own."""
    row = holders.user_holder(session, who.user_id)
    if row is None:
        raise Unauthorized(ACCOUNT_GONE, reason="token_revoked")
    check_holder(who, row.disabled, row.role, row.token_generation, row.tenant_id)


def revoke_tokens(session: Unit, user_id: str) -> None:
    """Every user token of this user stops working at its next request."""
    holders.bump_token_generation(session, user_id)


def check_grantable(held: Permissions, grants: Permissions, what: str, catalog: Catalog) -> None:
    """Refuse to hand out (as a role, rule or token scope) more than the actor holds."""
    beyond = grants.within(held, catalog)
    if beyond:
        shown = ", ".join(sorted(beyond)[:5]) + (" ..." if len(beyond) > 5 else "")
        raise Forbidden(f"you cannot {what}: it allows {shown}, which you may not do yourself")


def known_role(
    session: Unit, tenant_id: str, role: str, builtin_ok: Callable[[str], bool]
) -> Permissions:
    """The grants of a role name a user or rule of ``tenant_id`` may be given."""
    if role in BUILTIN:
        if not builtin_ok(role):
            raise Forbidden(f"only a global administrator can grant the role {role}")
        return BUILTIN[role]
    found = custom_roles.custom_role_grants(session, tenant_id, role)
    if found is None:
        custom = custom_roles.custom_role_names(session, tenant_id)
        names = sorted([*(r.value for r in BuiltinRole), *custom])
        raise InvalidInput(f"unknown role {role!r}; roles of this tenant: {', '.join(names)}")
    return Permissions.of(found)

"""Access an administrator hands out or takes back: custom roles, API tokens for
automation, and the failed sign-ins that lock accounts and addresses.

Nothing here hands out more than the actor holds (``access.check_grantable``), and
clearing a stronger account's failed guesses needs standing over it (``standing``).
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from typing import Any

from deskbroker.domain.permissions import BUILTIN, Permissions, check_grants
from deskbroker.errors import Conflict, Forbidden, InvalidInput, NotFound
from deskbroker.security import AGENT_ROLE, API_TOKEN_ROLE, TokenClaims
from deskbroker.services import access, write_context
from deskbroker.services.catalog_crud import Resource
from deskbroker.services.context import BrokerContext
from deskbroker.services.failed_names import UNKNOWN
from deskbroker.services.permission_catalog import catalog
from deskbroker.services.standing import may_manage
from deskbroker.services.throttle import account_key, address_key
from deskbroker.store import events, listings, throttle, user_lookups
from deskbroker.store.db import Unit
from deskbroker.store.repository import Repository
from deskbroker.store.row_dicts import columns_of
from deskbroker.store.tables import ApiToken, CustomRole, LoginThrottle, User, utcnow

# The roles tokens of agents and of automation name: never a person's role.
RESERVED_ROLES = frozenset({AGENT_ROLE, API_TOKEN_ROLE})
_ROLE_NAME = re.compile(r"^[a-z][a-z0-9_-]{1,39}$")


# --- custom roles --------------------------------------------------------------------
def prepare_role(
    session: Unit, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
) -> dict[str, Any]:
    """Check a custom role about to be written: its name, and grants within the actor's."""
    if "name" in data:
        name = data["name"]
        if name in BUILTIN or name in RESERVED_ROLES or not _ROLE_NAME.match(name):
            raise InvalidInput(
                f"role name {name!r}: use 2 to 40 lower-case letters, digits, - or _, starting "
                "with a letter, and not a built-in role's name"
            )
    if data.get("permissions") is not None:
        grants = check_grants(data["permissions"], catalog())
        held = write_context.actor_of(session).permissions
        access.check_grantable(held, Permissions.of(grants), "write this role", catalog())
        data["permissions"] = grants
    if existing is not None:
        # A role someone holds can only be narrowed or widened by one who may grant it.
        current = Permissions.of(existing.permissions)
        access.check_grantable(
            write_context.actor_of(session).permissions,
            current,
            f"change role {existing.name}",
            catalog(),
        )
    return data


def role_in_use(session: Unit, role: Any) -> None:
    """Refuse to delete a role a user holds or a rule grants."""
    holder = user_lookups.role_holder(session, role.tenant_id, role.name)
    if holder is not None:
        raise Conflict(f"role {role.name} is held by user {holder}; give them another role first")
    rule = user_lookups.rule_granting(session, role.tenant_id, role.name)
    if rule is not None:
        raise Conflict(f"role {role.name} is granted by assignment rule {rule!r}; change it first")


ROLES: Resource[Any] = Resource(
    model=CustomRole, label="role", prepare=prepare_role, before_delete=role_in_use
)


# --- API tokens ----------------------------------------------------------------------
def _audit(
    session: Unit, who: TokenClaims, kind: str, tenant_id: str | None, **detail: Any
) -> None:
    """An access change, logged in the tenant it concerns (not the global admin's own)."""
    events.append(
        session,
        kind,
        tenant_id=tenant_id,
        actor=who.username,
        user_id=who.user_id,
        detail=detail,
    )


def make_api_token(
    ctx: BrokerContext, who: TokenClaims, name: str, scopes: list[str], days: int
) -> dict[str, Any]:
    """A new API token of the actor, scoped within their own grants: its row and, once,
    the token."""
    if who.is_api_token or who.scopes is not None:
        raise Forbidden("an API token cannot make API tokens; sign in as a person")
    most = ctx.settings.api_token_max_days
    if days > most:
        raise InvalidInput(f"expires_in_days: at most {most} days on this broker")
    grants = check_grants(scopes, catalog())
    access.check_grantable(
        access.effective(ctx, who), Permissions.of(grants), "make this token", catalog()
    )
    _within_stored_role(ctx, who, Permissions.of(grants))
    expires = utcnow() + timedelta(days=days)
    with ctx.db.write() as session:
        row = ApiToken(
            tenant_id=who.tenant_id,
            user_id=who.user_id,
            name=name,
            scopes=grants,
            expires_at=expires,
        )
        session.add(row)
        session.flush()
        token = ctx.signer.issue_api(
            token_id=row.id,
            user_id=who.user_id,
            tenant_id=who.tenant_id,
            username=who.username,
            expires_at=int(expires.timestamp()),
        )
        _audit(
            session,
            who,
            "admin.create",
            who.tenant_id,
            resource="api-tokens",
            id=row.id,
            name=name,
            scopes=grants,
        )
        out = columns_of(row)
    return {**out, "token": token}


def _within_stored_role(ctx: BrokerContext, who: TokenClaims, grants: Permissions) -> None:
    """A token acts with its user's stored role on every use (``access.resolve_api_token``),
    never with a role an assignment rule gave their sign-in: a token that role could not
    use would be refused on its every call, so it is refused now, in words."""
    with ctx.db.read() as session:
        user = session.get(User, who.user_id)
        stored = str(user.role) if user is not None else who.role
    if stored == who.role:
        return
    held = access.effective(ctx, replace(who, role=stored))
    if grants.within(held, catalog()):
        raise Forbidden(
            f"an API token acts with your account's own role ({stored}), and your role "
            f"{who.role} comes from an assignment rule at sign-in, which a token cannot "
            "check again; ask an administrator to give your account that role, or ask for "
            "scopes your own role allows"
        )


def api_tokens(
    ctx: BrokerContext, tenant_id: str | None, user_id: str | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """One page of API token rows (never the tokens)."""
    with ctx.db.read() as session:
        return listings.api_tokens(session, tenant_id, user_id, limit, offset)


def revoke_api_token(
    ctx: BrokerContext, who: TokenClaims, tenant_id: str | None, token_id: str
) -> None:
    """Revoke an API token at once (a revoked one stays revoked, and is not logged again).
    A token acts as its user, so revoking one of a user stronger than the actor is
    refused like any other change of that user (``may_manage``); one's own is always
    one's own to revoke."""
    with ctx.db.write() as session:
        row = Repository(ApiToken, "API token").get(session, token_id, tenant_id)
        # Cutting off a stronger account's automation is acting on that account.
        owner = session.get(User, row.user_id)
        if owner is not None and owner.id != who.user_id:
            write_context.attach_actor(session, ctx, who)
            may_manage(session, owner, f"revoke the API token {row.name} of")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            session.flush()
            _audit(
                session,
                who,
                "admin.delete",
                row.tenant_id,
                resource="api-tokens",
                id=row.id,
                name=row.name,
            )


# --- lockouts ------------------------------------------------------------------------
def _known_accounts(session: Unit, secret: str, rows: list[LoginThrottle]) -> dict[str, str]:
    """The throttle keys of the users of the tenants ``rows`` name, to their names.

    An account's counter is keyed by a tag of the name (services/throttle.py), since the
    name typed may be a password; a listing names it only when it is a user's."""
    tenants = {row.key.split(":")[1] for row in rows if row.key.startswith("account:")}
    if not tenants:
        return {}
    users = user_lookups.usernames(session, tenants)
    return {account_key(secret, t, name): name for t, name in users}


def _lockout_out(row: LoginThrottle, known: dict[str, str]) -> dict[str, Any]:
    kind, _, rest = row.key.partition(":")
    if kind == "account":
        subject = known.get(row.key) or UNKNOWN + rest.partition(":")[2].lstrip("#")
    else:
        subject = rest
    return {
        "key": row.key,
        "kind": kind,
        "subject": subject,
        "failures": row.failures,
        "locked_until": row.locked_until,
    }


def lockouts(ctx: BrokerContext, tenant_id: str | None) -> list[dict[str, Any]]:
    """Accounts (a tenant's own) and client addresses with failed sign-ins."""
    with ctx.db.read() as session:
        rows = listings.lockouts(session, tenant_id)
        known = _known_accounts(session, ctx.settings.effective_secret_key, rows)
        return [_lockout_out(row, known) for row in rows]


def unlock_user(ctx: BrokerContext, who: TokenClaims, tenant_id: str | None, user_id: str) -> bool:
    """Clear a user's failed sign-ins and lockout; whether there were any."""
    with ctx.db.write() as session:
        user = Repository(User, "user").get(session, user_id, tenant_id)
        # Clearing a stronger account's failed guesses would help whoever guesses.
        write_context.attach_actor(session, ctx, who)
        may_manage(session, user, "unlock")
        key = account_key(ctx.settings.effective_secret_key, user.tenant_id, user.username)
        cleared = throttle.forget(session, [key])
        _audit(
            session,
            who,
            "admin.unlock",
            user.tenant_id,
            resource="users",
            id=user.id,
            name=user.username,
        )
    return bool(cleared)


def unlock_address(ctx: BrokerContext, who: TokenClaims, address: str) -> None:
    """Clear a client address's failed sign-ins: a global administrator's act, since an
    address spans tenants."""
    if who.role != "global_admin":
        raise Forbidden("only a global administrator can unlock an address: they span tenants")
    with ctx.db.write() as session:
        if not throttle.forget(session, [address_key(address)]):
            raise NotFound(f"address {address} has no failed sign-ins")
        _audit(session, who, "admin.unlock", None, resource="lockouts", address=address)

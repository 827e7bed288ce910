"""The admin catalog's identity sources, assignment rules and users: the checks each
write passes, how a row is shown, what refuses a delete, and a second factor's reset.

The hooks (``prepare_*``, ``*_out``, ``*_in_use``) run inside the generic admin
routes' unit of work (``api/admin/crud``); the stronger-account rule they apply is
``services/standing.py``.
"""

from __future__ import annotations

import json
from typing import Any

from deskbroker.domain.permissions import BuiltinRole
from deskbroker.domain.second_factor import SecondFactorMode
from deskbroker.errors import Conflict, InvalidInput
from deskbroker.identity.base import source_kinds, validate_params
from deskbroker.security import TokenClaims
from deskbroker.services import outbound_params, standing, write_context
from deskbroker.services.catalog_crud import Resource
from deskbroker.services.context import BrokerContext
from deskbroker.services.queues import keep_guard
from deskbroker.store import events, totp, user_lookups
from deskbroker.store.db import Unit
from deskbroker.store.repository import Repository
from deskbroker.store.row_dicts import columns_of
from deskbroker.store.tables import AssignmentRuleRow, IdentitySource, Policy, User

Role = BuiltinRole


def _must_exist(
    session: Unit, model: type[Any], object_id: str | None, tenant_id: str, label: str
) -> None:
    """Reject a reference to a missing object, or to another tenant's, with one message
    (as the generic routes' ``must_exist``)."""
    if object_id is None:
        return
    obj = session.get(model, object_id)
    if obj is not None and getattr(obj, "tenant_id", tenant_id) != tenant_id:
        actor = write_context.actor_if_any(session)
        if actor is not None and actor.is_global_admin:
            # Only a global admin sees both tenants: telling them is no leak.
            raise InvalidInput(
                f"{label} {object_id} belongs to another tenant; an object can only refer "
                "to its own tenant's"
            )
        obj = None
    if obj is None:
        raise InvalidInput(f"{label} {object_id} does not exist")


# --- identity sources ----------------------------------------------------------------
def prepare_source(
    session: Unit, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
) -> dict[str, Any]:
    """Check an identity source about to be written: standing over its accounts, its
    params as its kind describes them, where they reach, its second factor; seal its
    secrets."""
    if existing is not None:
        # Its servers, second factor and switch decide how its accounts sign in.
        standing.check_source(session, existing, "change")
    kind = data.get("kind") or existing.kind
    if "params" in data or existing is None:
        data["params"] = validate_params(kind, data.get("params") or {})
        outbound_params.vet(
            session,
            ctx,
            what=f"a {kind} identity source's",
            params_model=source_kinds()[kind].Params,
            params=data["params"],
            previous=existing.params if existing is not None else None,
            data=data,
        )
    if data.get("second_factor") is not None:
        data["second_factor"] = SecondFactorMode(data["second_factor"]).value
        driver = source_kinds().get(kind)
        asks = data["second_factor"] != SecondFactorMode.OFF
        if asks and driver is not None and not driver.accepts_passwords:
            # Its users sign in at their provider, which runs its own second factor.
            raise InvalidInput(
                f"a {kind} source takes no passwords here, so it cannot ask for one-time "
                "codes: set second_factor on the provider's side"
            )
    if "secrets" in data:
        secrets = data.pop("secrets")
        data["secrets_sealed"] = ctx.secrets.seal(json.dumps(secrets)) if secrets else None
    # Whoever last set it up vouches for it: a tenant administrator's directory is not
    # sent the unknown names of a tenant that holds a global administrator.
    actor = write_context.actor_of(session).actor
    data["set_by_global_admin"] = actor.role == Role.GLOBAL_ADMIN.value and actor.scopes is None
    return {k: v for k, v in data.items() if v is not None or k == "secrets_sealed"}


def source_out(session: Unit, source: Any) -> dict[str, Any]:
    """A source as shown: never its sealed secrets, only whether it has some."""
    out = columns_of(source)
    out["has_secrets"] = bool(source.secrets_sealed)
    return out


def source_in_use(session: Unit, source: Any) -> None:
    """Refuse to delete a source the actor has no standing over, or one with users."""
    standing.check_source(session, source, "delete")
    user = user_lookups.user_of_source(session, source.id)
    if user is not None:
        raise Conflict(f"identity source {source.name} still has users (e.g. {user})")


IDENTITY_SOURCES: Resource[Any] = Resource(
    model=IdentitySource,
    label="identity source",
    prepare=prepare_source,
    to_read=source_out,
    before_delete=source_in_use,
)


# --- assignment rules ----------------------------------------------------------------
def prepare_rule(
    session: Unit, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
) -> dict[str, Any]:
    """Check a rule about to be written: what it names exists in the tenant, its role
    is one the actor may grant, and no stronger account signs in through it."""
    if "identity_source_id" in data:
        _must_exist(session, IdentitySource, data["identity_source_id"], tenant, "identity source")
    _must_exist(session, Policy, data.get("policy_id"), tenant, "policy")
    if existing is not None and existing.role != Role.USER:
        # Whoever changes a rule's conditions decides who gets its role.
        standing.grant_role(session, tenant, existing.role, "change a rule that grants")
    if "role" in data and data["role"] is not None:
        data["role"] = standing.grant_role(session, tenant, data["role"], "make a rule that grants")
    named = {k: v for k, v in data.items() if v is not None}
    if existing is None:
        standing.check_rule(session, tenant, data["identity_source_id"], [named], "make")
    else:
        stored = standing.rule_columns(existing)
        standing.check_rule(
            session, tenant, existing.identity_source_id, [stored, {**stored, **named}], "change"
        )
    return data


def rule_in_use(session: Unit, rule: Any) -> None:
    """Refuse to delete a rule through which a stronger account signs in."""
    standing.check_rule(
        session,
        rule.tenant_id,
        rule.identity_source_id,
        [standing.rule_columns(rule)],
        "delete",
    )


def offers_changed(session: Unit, ctx: BrokerContext, row: Any) -> None:
    """A rule or user written: who is offered which pool may have changed, and with it
    which pools are guarded (``queues.keep_guard``)."""
    keep_guard(session, row.tenant_id)


ASSIGNMENT_RULES: Resource[Any] = Resource(
    model=AssignmentRuleRow,
    label="assignment rule",
    prepare=prepare_rule,
    after_write=offers_changed,
    before_delete=rule_in_use,
    holds_membership=True,
)


# --- users ---------------------------------------------------------------------------
def prepare_user(
    session: Unit, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
) -> dict[str, Any]:
    """Check a user about to be written (standing over them and over any account of the
    same name, a role the actor may grant, as they will be after their next login), hash
    the password, and end their sessions when their password, switch or role changes."""
    if "identity_source_id" in data:
        _must_exist(session, IdentitySource, data["identity_source_id"], tenant, "identity source")
    if existing is not None:
        standing.may_manage(session, existing, "change")
    else:
        # The same name in a second source makes a bare login name ambiguous, and the
        # owner of that source could then be sent the first account's password.
        name = str(data.get("username") or "")
        for other in user_lookups.same_name_elsewhere(
            session, tenant, data.get("identity_source_id"), name
        ):
            standing.may_manage(session, other, "make a second account of the name of")
    if "password" in data:
        password = data.pop("password")
        # Null removes the password: the user can no longer log in with one.
        data["password_hash"] = None if password is None else ctx.hashing.hash(password)
    if data.get("role") is not None:
        data["role"] = standing.grant_role(session, tenant, data["role"], "give a user")
    # The user as they will be: with groups or attributes that a rule turns into a role
    # the actor may not grant, they would be that role at their next login.
    role = data.get("role") or (existing.role if existing is not None else Role.USER.value)
    if role == Role.USER:
        source = data.get("identity_source_id") or (existing.identity_source_id if existing else "")
        username = data.get("username") or (existing.username if existing else "")
        groups = (
            data["groups"]
            if data.get("groups") is not None
            else (existing.groups if existing else [])
        )
        attributes = (
            data["attributes"]
            if data.get("attributes") is not None
            else (existing.attributes if existing else {})
        )
        for granted in sorted(standing.rule_roles(session, source, username, groups, attributes)):
            standing.grant_role(session, tenant, granted, "make a user whom a rule gives")
    if existing is not None and (
        "password_hash" in data
        or (data.get("disabled") and not existing.disabled)
        or (data.get("role") is not None and data["role"] != existing.role)
    ):
        # A new password, a disabled account or another role: the session tokens the user
        # holds stop working at their next request.
        data["token_generation"] = (existing.token_generation or 0) + 1
    return data


# Never rendered: the hash, and the second factor's sealed secret and spent step.
_USER_HIDDEN = frozenset({"password_hash", "totp_sealed", "totp_last_step", "totp_enrolled_at"})


def user_out(session: Unit, user: Any) -> dict[str, Any]:
    """A user as shown: never the hash or the second factor's secret, only whether
    they have them."""
    out = columns_of(user, _USER_HIDDEN)
    out["has_password"] = bool(user.password_hash)
    out["totp_enrolled"] = user.totp_enrolled_at is not None
    return out


def user_in_use(session: Unit, user: Any) -> None:
    """Refuse to delete oneself, a stronger account, or a user who holds a desktop."""
    if (actor := write_context.actor_if_any(session)) is not None and user.id == actor.user_id:
        raise Conflict("you cannot delete your own account; ask another administrator")
    standing.may_manage(session, user, "delete")
    held = user_lookups.held_desktop(session, user.id)
    if held is not None:
        raise Conflict(f"user {user.username} holds desktop {held}; release it first")


USERS: Resource[Any] = Resource(
    model=User,
    label="user",
    prepare=prepare_user,
    after_write=offers_changed,
    to_read=user_out,
    before_delete=user_in_use,
    holds_membership=True,
)


def reset_second_factor(
    ctx: BrokerContext, who: TokenClaims, tenant_id: str | None, user_id: str
) -> None:
    """Forget a user's TOTP secret and end any login waiting for a code (a lost
    authenticator app)."""
    with ctx.db.write() as session:
        write_context.attach_actor(session, ctx, who)
        user = Repository(User, "user").get(session, user_id, tenant_id)
        standing.may_manage(session, user, "reset the second factor of")
        totp.clear(session, user.id)
        events.append(
            session,
            "admin.totp_reset",
            tenant_id=user.tenant_id,
            actor=who.username,
            user_id=who.user_id,
            detail={"resource": "users", "id": user.id, "name": user.username},
        )

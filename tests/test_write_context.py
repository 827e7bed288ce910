"""The actor an admin write's unit of work carries (services/write_context.py)."""

from __future__ import annotations

import pytest

from deskbroker.domain.permissions import BUILTIN, BuiltinRole
from deskbroker.security import TokenClaims
from deskbroker.services import write_context
from deskbroker.services.context import BrokerContext


def _claims(role: str, scopes: tuple[str, ...] | None = None) -> TokenClaims:
    return TokenClaims(
        user_id="u-1",
        tenant_id="t-1",
        role=role,
        username="alice",
        expires_at=0,
        token_id="tok-1",
        scopes=scopes,
    )


def test_a_unit_of_work_carries_the_actor_it_was_given(ctx: BrokerContext) -> None:
    who = _claims(BuiltinRole.TENANT_ADMIN.value)
    with ctx.db.read() as session:
        assert write_context.actor_if_any(session) is None
        attached = write_context.attach_actor(session, ctx, who)
        found = write_context.actor_of(session)
        assert found is attached
        assert found.actor == who and found.user_id == "u-1"
        assert not found.is_global_admin and not found.scoped
        # The role's own grants: a tenant administrator's, no more.
        assert found.permissions.grants == BUILTIN[BuiltinRole.TENANT_ADMIN.value].grants
    with ctx.db.read() as session:
        # A new unit of work starts with nobody: the actor ends with its unit.
        assert write_context.actor_if_any(session) is None


def test_a_hook_that_needs_an_actor_and_finds_none_fails(ctx: BrokerContext) -> None:
    with ctx.db.read() as session, pytest.raises(RuntimeError, match="no actor attached"):
        write_context.actor_of(session)


def test_an_api_token_is_scoped(ctx: BrokerContext) -> None:
    who = _claims(BuiltinRole.GLOBAL_ADMIN.value, scopes=("pools:read",))
    with ctx.db.read() as session:
        found = write_context.attach_actor(session, ctx, who)
        assert found.is_global_admin and found.scoped
        assert found.permissions.allows("pools", "read")
        assert not found.permissions.allows("pools", "delete")

"""Who is writing: the actor an admin write's unit of work carries to its hooks.

The catalog's hooks (``prepare``, ``after_write``, ``before_delete``), the
stronger-account rule (``services/standing.py``) and the params vetting
(``services/outbound_params.py``) run deep inside one unit of work and need to know who
asked. The service that opens the unit attaches a ``WriteContext`` once
(``attach_actor``); the hooks read it back typed (``actor_of``, or ``actor_if_any`` where
a write made by the broker itself, with no actor, is possible). It is kept in the
session's ``info`` under one private key, so it ends with the unit of work.
"""

from __future__ import annotations

from dataclasses import dataclass

from deskbroker.domain.permissions import BuiltinRole, Permissions
from deskbroker.security import TokenClaims
from deskbroker.services import access
from deskbroker.services.context import BrokerContext
from deskbroker.store import membership
from deskbroker.store.db import Unit

_KEY = "deskbroker.write_context"


@dataclass(frozen=True)
class WriteContext:
    """The actor of an admin write and the permissions they hold (their role's grants,
    narrowed by an API token's scopes)."""

    actor: TokenClaims
    permissions: Permissions

    @property
    def role(self) -> str:
        return self.actor.role

    @property
    def user_id(self) -> str:
        return self.actor.user_id

    @property
    def is_global_admin(self) -> bool:
        """A global administrator's role, whether signed in or through an API token."""
        return self.actor.role == BuiltinRole.GLOBAL_ADMIN.value

    @property
    def scoped(self) -> bool:
        """Made with an API token (its scopes set), not a person's session token."""
        return self.actor.scopes is not None


def attach_actor(session: Unit, ctx: BrokerContext, who: TokenClaims) -> WriteContext:
    """Record ``who`` as the actor of the unit of work ``session``; returns the context."""
    context = WriteContext(actor=who, permissions=access.effective(ctx, who))
    session.info[_KEY] = context
    # A person's request: its waits for the tenant's lock hold a thread of the node's.
    membership.bound_waits(session)
    return context


def actor_if_any(session: Unit) -> WriteContext | None:
    """The unit of work's actor, or None for a write the broker makes on its own."""
    found = session.info.get(_KEY)
    return found if isinstance(found, WriteContext) else None


def actor_of(session: Unit) -> WriteContext:
    """The unit of work's actor; a hook that needs one and finds none is a bug (it would
    otherwise check nothing), so this raises rather than assuming anyone."""
    found = actor_if_any(session)
    if found is None:
        raise RuntimeError("an admin write's hook ran in a unit of work with no actor attached")
    return found

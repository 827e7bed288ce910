"""The identity seam.

A source implements ``authenticate(credentials, known)`` returning an ``Identity`` or
``None`` (wrong credentials), and ``lookup(username)``. ``known`` is the broker's own row
for the user when there is one: a local source checks its password hash, a directory
ignores it and binds. A directory (``provisions_users``) is the truth about its users:
the login path creates or refreshes the broker's row from the ``Identity`` it returns.
Blocking clients are run off the event loop by the caller.
Sources are registered through the ``deskbroker.identity`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from deskbroker.domain.accounts import UserRecord
from deskbroker.domain.rules import Identity
from deskbroker.errors import InvalidInput
from deskbroker.security import PasswordHashing
from deskbroker.write_guard import guard_methods


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


# The seam's calls that may reach a directory or provider (``_request`` is the OpenID
# Connect source's one way out): none may run inside a database write unit.
OUTBOUND_CALLS = ("authenticate", "lookup", "_request")


class IdentitySourceDriver:
    """Base of every identity source kind.

    Every call in ``OUTBOUND_CALLS`` refuses to run inside a database write unit
    (``deskbroker.write_guard``); a source names in ``offline`` those that do no I/O.
    """

    kind: ClassVar[str] = ""
    offline: ClassVar[frozenset[str]] = frozenset()
    Params: ClassVar[type[BaseModel]]
    # True when the source, not the broker, holds the users: the login path then creates
    # or refreshes the broker's row from what ``authenticate`` returns.
    provisions_users: ClassVar[bool] = False
    # False when users sign in at the source itself (OpenID Connect), never with a
    # password given to the broker: the password login then skips the source.
    accepts_passwords: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        guard_methods(cls, OUTBOUND_CALLS)

    def __init__(
        self, params: Mapping[str, Any], secrets: Mapping[str, str], hashing: PasswordHashing
    ) -> None:
        self.params = self.Params.model_validate(dict(params))
        self.secrets = dict(secrets)
        self.hashing = hashing

    def authenticate(self, credentials: Credentials, known: UserRecord | None) -> Identity | None:
        """Verify the credentials; ``None`` means they are wrong."""
        raise InvalidInput(f"identity source kind {self.kind!r} cannot authenticate")

    def close(self) -> None:
        """Let go of connections; called when a newer configuration replaces this one."""

    def lookup(self, username: str, known: UserRecord | None) -> Identity | None:
        """Describe a user without their password (explain, admin pickers)."""
        if known is None:
            return None
        return Identity(
            username=known.username,
            groups=frozenset(known.groups),
            attributes={k: str(v) for k, v in known.attributes.items()},
            display_name=known.display_name,
            email=known.email,
        )


def split_domain(username: str) -> tuple[str, str | None]:
    """``DOMAIN\\user`` and ``user@domain`` as (user, lower-case domain); else (name, None)."""
    if "\\" in username:
        domain, _, name = username.partition("\\")
        return name, domain.lower()
    if "@" in username:
        name, _, domain = username.rpartition("@")
        return name, domain.lower()
    return username, None


def password_refusal(source: str) -> str:
    """Why a password login at a source whose users sign in elsewhere cannot work."""
    return (
        f"{source} signs users in at its OpenID provider, not with a password given to the "
        f"broker: use the portal's sign-in (GET /api/v1/auth/oidc/{source}/start) or run "
        f"`deskbroker login --oidc {source} --url BROKER_URL`"
    )


@cache
def source_kinds() -> dict[str, type[IdentitySourceDriver]]:
    found: dict[str, type[IdentitySourceDriver]] = {}
    for entry in entry_points(group="deskbroker.identity"):
        cls = entry.load()
        if isinstance(cls, type) and issubclass(cls, IdentitySourceDriver):
            found[entry.name] = cls
    return found


def validate_params(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    known = source_kinds()
    if kind not in known:
        raise InvalidInput(
            f"unknown identity source kind {kind!r}; installed kinds: {', '.join(sorted(known))}"
        )
    try:
        return known[kind].Params.model_validate(dict(params)).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"identity source params: {where}: {first['msg']}") from exc


guard_methods(IdentitySourceDriver, OUTBOUND_CALLS)

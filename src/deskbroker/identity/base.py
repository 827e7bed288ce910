"""The identity seam.

A source implements ``authenticate(credentials, known)`` returning an ``Identity`` or
``None`` (wrong credentials), and ``lookup(username)``. ``known`` is the broker's own row
for the user when there is one: a local source checks its password hash, a directory
ignores it and binds. A directory (``provisions_users``) is the truth about its users:
the login path creates or refreshes the broker's row from the ``Identity`` it returns.
Blocking clients are run off the event loop by the caller.

What a source offers is declared in ``capabilities`` (``SourceCapability``): a password
checked by ``authenticate``, or a sign-in at a provider (in a browser, or by the device
flow) through the optional interface ``identity.sign_in.ProviderSignIn``. The registry
checks each source against what it declares when it loads it, so a service asks the seam
(``provider_sign_in``) and never names a driver class.
Sources are registered through the ``deskbroker.identity`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib.metadata import entry_points
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from deskbroker.domain.accounts import UserRecord
from deskbroker.domain.rules import Identity
from deskbroker.errors import InvalidInput
from deskbroker.identity.sign_in import ProviderSignIn
from deskbroker.security import PasswordHashing
from deskbroker.write_guard import guard_methods


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


class SourceCapability(StrEnum):
    """What an identity source offers; the broker asks before it calls."""

    # ``authenticate`` checks a user name and password given to the broker.
    PASSWORD = "password"
    # Users sign in at the provider in a browser (authorization code flow with PKCE).
    BROWSER_SIGN_IN = "browser_sign_in"
    # Users sign in at the provider from a device (the device flow, RFC 8628).
    DEVICE_SIGN_IN = "device_sign_in"


# What each sign-in capability needs a ``ProviderSignIn`` source to implement itself.
SIGN_IN_METHODS: dict[SourceCapability, tuple[str, ...]] = {
    SourceCapability.BROWSER_SIGN_IN: ("issuer", "authorization_url", "exchange_code", "sign_in"),
    SourceCapability.DEVICE_SIGN_IN: ("issuer", "start_device", "poll_device", "sign_in"),
}


class SourceContractError(TypeError):
    """An installed identity source breaks the seam's contract: the broker refuses to
    start with it rather than fail on a user's first sign-in."""


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
    capabilities: ClassVar[frozenset[SourceCapability]] = frozenset({SourceCapability.PASSWORD})
    # Derived from ``capabilities`` (set for each subclass, never by hand): False when
    # users sign in at a provider (OpenID Connect), never with a password given to the
    # broker, so the password login skips the source.
    accepts_passwords: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.accepts_passwords = SourceCapability.PASSWORD in cls.capabilities
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


def answers_lookups(kind: type[IdentitySourceDriver]) -> bool:
    """Whether ``kind``'s ``lookup`` asks the source itself, so that its answer can say a
    user's groups changed or that the user is gone: a source that provisions users and
    looks them up over the network. The base ``lookup`` only repeats the broker's row (an
    OpenID provider tells about a user at their sign-in alone), and a source naming
    ``lookup`` in ``offline`` does no I/O."""
    return (
        kind.provisions_users
        and "lookup" not in kind.offline
        and kind.lookup is not IdentitySourceDriver.lookup
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


def provider_sign_in(
    driver: IdentitySourceDriver, capability: SourceCapability
) -> ProviderSignIn | None:
    """The source's sign-in at its provider when it declares ``capability``, else None.

    The registry has checked that a source declaring a sign-in capability is a
    ``ProviderSignIn`` with the methods it needs (``contract_faults``)."""
    if capability in driver.capabilities and isinstance(driver, ProviderSignIn):
        return driver
    return None


def contract_faults(cls: type[IdentitySourceDriver]) -> list[str]:
    """What ``cls`` declares but does not provide, in words; empty when it conforms."""
    faults: list[str] = []
    if not cls.kind:
        faults.append("it sets no kind")
    if not isinstance(getattr(cls, "Params", None), type):
        faults.append("it has no Params model")
    if not cls.capabilities:
        faults.append("it declares no capability: nobody could sign in through it")
    if SourceCapability.PASSWORD in cls.capabilities and (
        cls.authenticate is IdentitySourceDriver.authenticate
    ):
        faults.append("it declares password but does not implement authenticate()")
    for capability in sorted(cls.capabilities & SIGN_IN_METHODS.keys()):
        if not issubclass(cls, ProviderSignIn):
            faults.append(f"it declares {capability.value} but is no ProviderSignIn")
            continue
        for method in SIGN_IN_METHODS[capability]:
            if getattr(cls, method) is getattr(ProviderSignIn, method):
                faults.append(f"it declares {capability.value} but does not implement {method}")
    return faults


@cache
def source_kinds() -> dict[str, type[IdentitySourceDriver]]:
    """Every installed source by kind; first-party sources are entry points too.
    Raises ``SourceContractError`` naming the entry point of a source that breaks the
    contract (see ``contract_faults``)."""
    found: dict[str, type[IdentitySourceDriver]] = {}
    for entry in entry_points(group="deskbroker.identity"):
        cls = entry.load()
        if isinstance(cls, type) and issubclass(cls, IdentitySourceDriver):
            faults = contract_faults(cls)
            if faults:
                raise SourceContractError(
                    f"identity source {entry.name!r} ({entry.value}) cannot be loaded: "
                    + "; ".join(sorted(set(faults), key=faults.index))
                )
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

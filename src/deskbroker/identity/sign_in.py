"""The identity seam's optional interface for sources whose users sign in at a provider.

A source that declares ``SourceCapability.BROWSER_SIGN_IN`` (the authorization code flow
with PKCE, through the portal) or ``DEVICE_SIGN_IN`` (the device flow, through the CLI)
also subclasses ``ProviderSignIn`` and implements the methods of what it declares; the
registry checks both when it loads the source (``identity/base.contract_faults``). The
flows' state (rows, cookies, one-time codes) is the broker's, in
``services/oidc_signin.py``; the source only talks to its provider and verifies what the
provider hands back. Services reach this interface through
``identity.base.provider_sign_in``, never by naming a driver class.
"""

from __future__ import annotations

from dataclasses import dataclass

from deskbroker.domain.rules import Identity
from deskbroker.errors import BadRequest


@dataclass(frozen=True)
class TokenSet:
    """What the provider's token endpoint answers."""

    id_token: str
    access_token: str | None


@dataclass(frozen=True)
class DeviceGrant:
    """The provider's answer to a device authorization request (RFC 8628 §3.2)."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: int
    interval: int


@dataclass(frozen=True)
class ProviderUser:
    """A verified sign-in: who the provider says the user is, and the account (issuer and
    ``sub``) that says it, by which the broker matches its user."""

    identity: Identity
    issuer: str
    subject: str


@dataclass(frozen=True)
class DevicePending:
    """The user has not approved yet; ``slow_down`` asks for a longer interval."""

    slow_down: bool


class ProviderSignIn:
    """Sign-in at a provider: what a source declaring a sign-in capability implements.

    The methods below only refuse; the registry refuses to load a source that declares a
    capability without overriding the methods it needs (``SIGN_IN_METHODS`` in
    ``identity/base.py``). Every method may reach the provider: the source routes those
    calls through its guarded ``_request`` (no call inside a database write unit).
    """

    @property
    def issuer(self) -> str:
        """The provider's name for itself; a callback naming another one is refused."""
        raise NotImplementedError

    @property
    def redirect_uri(self) -> str | None:
        """The broker's callback as registered at the provider; ``None``: the request's."""
        return None

    @property
    def sign_in_ttl_s(self) -> int:
        """How long a started sign-in stays valid."""
        return 600

    def authorization_url(
        self, *, state: str, nonce: str, code_challenge: str, redirect_uri: str
    ) -> str:
        """Where to send the browser to sign in (``BROWSER_SIGN_IN``)."""
        raise BadRequest("this identity source offers no sign-in in a browser")

    def exchange_code(self, *, code: str, code_verifier: str, redirect_uri: str) -> TokenSet:
        """The tokens for the code the provider's callback carried (``BROWSER_SIGN_IN``)."""
        raise BadRequest("this identity source offers no sign-in in a browser")

    def start_device(self) -> DeviceGrant:
        """A device sign-in for the user to approve at the provider (``DEVICE_SIGN_IN``)."""
        raise BadRequest("this identity source offers no device sign-in")

    def poll_device(self, device_code: str) -> TokenSet | DevicePending:
        """The tokens once the user approved, else ``DevicePending`` (``DEVICE_SIGN_IN``)."""
        raise BadRequest("this identity source offers no device sign-in")

    def sign_in(self, tokens: TokenSet, nonce: str | None) -> ProviderUser:
        """Verify what the provider handed back and describe the user (both flows)."""
        raise NotImplementedError

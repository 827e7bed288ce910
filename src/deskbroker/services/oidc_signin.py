"""OpenID Connect sign-in flows: authorization code with PKCE (the portal) and the device
flow (the CLI), with the broker as the relying party.

Every flow is a database row (``store/oidc_flows.py``), not process memory, so a cluster
of brokers needs no sticky sessions: one broker starts, any other finishes. A flow is
consumed by one conditional UPDATE before its code is exchanged, so a replayed ``state``
or a second poller never signs anyone in twice. Once the provider's ID token is
verified, the user goes through the same login path as a password login.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from deskbroker.errors import BadRequest, DeskbrokerError, Forbidden, SignInPending
from deskbroker.identity.oidc import DevicePending, OidcIdentitySource
from deskbroker.services.context import BrokerContext
from deskbroker.services.login import LoginResult, LoginService
from deskbroker.store import oidc_flows
from deskbroker.store.oidc_flows import FlowRecord, flow_key

UNKNOWN_STATE = (
    "this sign-in's state is not one the broker issued (it was altered, or is older than an "
    "hour); start the sign-in again"
)
REPLAYED_STATE = "this sign-in was finished already and cannot be used twice; start again"
EXPIRED_STATE = "this sign-in took too long and has expired; start it again"
UNKNOWN_DEVICE = "there is no device sign-in with this handle; start one again"


@dataclass(frozen=True)
class SignedIn:
    """A finished sign-in, and the portal page to return to (if the portal started it)."""

    result: LoginResult
    return_to: str | None


@dataclass(frozen=True)
class DeviceStart:
    """What the CLI shows the user, and the handle it polls the broker with."""

    device_handle: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: int
    interval: int


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def check_return_to(value: str | None) -> str | None:
    """Only a path on this broker: a token must never be handed to another site."""
    if value is None or value == "":
        return None
    if (
        not value.startswith("/")
        or value.startswith(("//", "/\\"))
        or "#" in value
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        raise BadRequest(f"redirect must be a path on this broker such as /portal/, not {value!r}")
    return value


class OidcSignIn:
    """Starts and finishes OpenID Connect sign-ins for one broker node."""

    def __init__(self, ctx: BrokerContext, login: LoginService) -> None:
        self.ctx = ctx
        self.login = login

    def _oidc(self, tenant: str | None, source: str) -> tuple[str, str, OidcIdentitySource]:
        view, driver = self.login.source_driver(tenant, source)
        if not isinstance(driver, OidcIdentitySource):
            raise BadRequest(
                f"identity source {source!r} is of kind {view.kind!r}: it takes a username and "
                "password at POST /api/v1/auth/login, not an OpenID Connect sign-in"
            )
        return view.tenant_id, view.id, driver

    def _flow_driver(self, flow: FlowRecord) -> OidcIdentitySource:
        driver = self.login.driver_by_id(flow.identity_source_id)
        if not isinstance(driver, OidcIdentitySource):
            raise BadRequest("the identity source of this sign-in no longer uses OpenID Connect")
        return driver

    # --- authorization code with PKCE ---------------------------------------------
    def start(
        self, *, tenant: str | None, source: str, return_to: str | None, callback_url: str
    ) -> str:
        """A new sign-in: the provider's authorization URL to send the browser to."""
        return_to = check_return_to(return_to)
        tenant_id, source_id, driver = self._oidc(tenant, source)
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        redirect_uri = driver.config.redirect_uri or callback_url
        # Asks the provider's discovery document first: when the provider is down, the
        # user hears so and nothing is written.
        url = driver.authorization_url(
            state=state, nonce=nonce, code_challenge=_challenge(verifier), redirect_uri=redirect_uri
        )
        with self.ctx.db.write() as session:
            oidc_flows.create(
                session,
                key=flow_key(state),
                kind="code",
                tenant_id=tenant_id,
                identity_source_id=source_id,
                sealed=self.ctx.secrets.seal(json.dumps({"code_verifier": verifier})),
                ttl_s=driver.config.sign_in_ttl_s,
                nonce=nonce,
                redirect_uri=redirect_uri,
                return_to=return_to,
            )
        return url

    def finish(
        self,
        *,
        state: str | None,
        code: str | None,
        error: str | None,
        error_description: str | None,
        issuer: str | None,
        client_address: str | None,
    ) -> SignedIn:
        """The provider's callback: consume the state, exchange the code, log in."""
        if not state:
            raise BadRequest(
                "the callback carries no state: open the sign-in from the portal, not this URL"
            )
        key = flow_key(state)
        with self.ctx.db.write() as session:
            flow = oidc_flows.find(session, key, "code")
            if flow is None:
                raise BadRequest(UNKNOWN_STATE)
            first = oidc_flows.consume(session, key)
        actor = f"oidc:{flow.identity_source_id}"
        try:
            if not first:
                raise BadRequest(REPLAYED_STATE, reason="state_replayed")
            if flow.expired(datetime.now(UTC)):
                raise BadRequest(EXPIRED_STATE, reason="state_expired")
            driver = self._flow_driver(flow)
            if error:
                said = f"{error}: {error_description}" if error_description else error
                cls = Forbidden if error == "access_denied" else BadRequest
                raise cls(
                    f"the identity provider did not sign you in ({said})", reason="provider_refused"
                )
            # RFC 9207: an answer carrying another issuer is a mix-up attack.
            if issuer is not None and issuer != driver.config.issuer:
                raise BadRequest(
                    f"the callback comes from issuer {issuer!r}, not {driver.config.issuer!r}",
                    reason="issuer_mismatch",
                )
            if not code:
                raise BadRequest("the callback carries no authorization code")
            verifier = json.loads(self.ctx.secrets.open(flow.sealed))["code_verifier"]
            tokens = driver.exchange_code(
                code=code, code_verifier=verifier, redirect_uri=flow.redirect_uri
            )
            identity = driver.sign_in(tokens, flow.nonce)
        except DeskbrokerError as exc:
            self.login.refused(
                flow.tenant_id, actor, client_address, exc.extra.get("reason", "oidc_refused")
            )
            raise
        result = self.login.login_identity(
            flow.identity_source_id, identity, client_address=client_address
        )
        return SignedIn(result, flow.return_to)

    # --- device flow (RFC 8628) ----------------------------------------------------
    def start_device(self, *, tenant: str | None, source: str) -> DeviceStart:
        tenant_id, source_id, driver = self._oidc(tenant, source)
        grant = driver.start_device()
        handle = secrets.token_urlsafe(32)
        with self.ctx.db.write() as session:
            oidc_flows.create(
                session,
                key=flow_key(handle),
                kind="device",
                tenant_id=tenant_id,
                identity_source_id=source_id,
                sealed=self.ctx.secrets.seal(json.dumps({"device_code": grant.device_code})),
                ttl_s=max(30, min(grant.expires_in, 3600)),
                interval_s=grant.interval,
            )
        return DeviceStart(
            device_handle=handle,
            user_code=grant.user_code,
            verification_uri=grant.verification_uri,
            verification_uri_complete=grant.verification_uri_complete,
            expires_in=grant.expires_in,
            interval=grant.interval,
        )

    def poll_device(self, *, handle: str, client_address: str | None) -> LoginResult:
        """The login once the user approved at the provider; ``SignInPending`` until then."""
        key = flow_key(handle)
        with self.ctx.db.read() as session:
            flow = oidc_flows.find(session, key, "device")
        if flow is None:
            raise BadRequest(UNKNOWN_DEVICE)
        if flow.used_at is not None:
            raise BadRequest("this device sign-in was finished already; start a new one")
        if flow.expired(datetime.now(UTC)):
            raise BadRequest("this device sign-in expired before it was approved; start again")
        with self.ctx.db.write() as session:
            turn = oidc_flows.take_poll_turn(session, key, flow.interval_s)
        if not turn:
            raise SignInPending(
                f"asked too soon: ask again in {flow.interval_s} seconds",
                error="slow_down",
                retry_after_s=flow.interval_s,
            )
        actor = f"oidc:{flow.identity_source_id}"
        driver = self._flow_driver(flow)
        device_code = json.loads(self.ctx.secrets.open(flow.sealed))["device_code"]
        try:
            answer = driver.poll_device(device_code)
        except (BadRequest, Forbidden) as exc:
            # The provider ended this sign-in for good (declined, expired).
            with self.ctx.db.write() as session:
                oidc_flows.consume(session, key)
            self.login.refused(flow.tenant_id, actor, client_address, "provider_refused")
            raise exc
        if isinstance(answer, DevicePending):
            interval = flow.interval_s + 5 if answer.slow_down else flow.interval_s
            if answer.slow_down:
                with self.ctx.db.write() as session:
                    oidc_flows.slow_down(session, key, interval)
            raise SignInPending(
                "waiting for you to approve the sign-in at the identity provider; ask again "
                f"in {interval} seconds",
                error="slow_down" if answer.slow_down else "authorization_pending",
                retry_after_s=interval,
            )
        with self.ctx.db.write() as session:
            if not oidc_flows.consume(session, key):
                raise BadRequest("this device sign-in was finished already; start a new one")
        try:
            identity = driver.sign_in(answer, None)
        except DeskbrokerError as exc:
            self.login.refused(
                flow.tenant_id, actor, client_address, exc.extra.get("reason", "oidc_refused")
            )
            raise
        return self.login.login_identity(
            flow.identity_source_id, identity, client_address=client_address
        )

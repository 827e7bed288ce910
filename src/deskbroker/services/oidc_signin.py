"""OpenID Connect sign-in flows: authorization code with PKCE (the portal) and the device
flow (the CLI), with the broker as the relying party.

Every flow is a database row (``store/oidc_flows.py``), not process memory, so a cluster
of brokers needs no sticky sessions: one broker starts, any other finishes. A flow is
consumed by one conditional UPDATE before its code is exchanged, so a replayed ``state``
or a second poller never signs anyone in twice. Once the provider's ID token is
verified, the provider's account (issuer + ``sub``) picks the broker user
(``store/oidc_subjects.py``), who goes through the same login path as a password login.

No token ever travels in a URL. The callback only comes back to the browser that
started the sign-in (a binding cookie set at the start: no login CSRF), goes back only to
a configured portal page, and hands the browser a one-time code, which the portal
redeems by POST for the token; any broker of a cluster redeems it, once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar
from urllib.parse import urlsplit

from deskbroker import metrics
from deskbroker.config import PORTAL_PATH
from deskbroker.domain.timestamps import aware
from deskbroker.errors import (
    BadRequest,
    DeskbrokerError,
    Forbidden,
    SignInPending,
    TooManySignInsStarted,
)
from deskbroker.identity.base import SourceCapability, provider_sign_in
from deskbroker.identity.sign_in import DevicePending, ProviderSignIn, ProviderUser
from deskbroker.services.context import BrokerContext
from deskbroker.services.login import LoginResult, LoginService
from deskbroker.services.throttle import address_key
from deskbroker.store import oidc_flows, oidc_subjects, throttle
from deskbroker.store.oidc_flows import FlowRecord, flow_key
from deskbroker.store.tables import utcnow

T = TypeVar("T")

UNKNOWN_STATE = (
    "this sign-in's state is not one the broker issued (it was altered, or is older than an "
    "hour); start the sign-in again"
)
REPLAYED_STATE = "this sign-in was finished already and cannot be used twice; start again"
EXPIRED_STATE = "this sign-in took too long and has expired; start it again"
UNKNOWN_DEVICE = "there is no device sign-in with this handle; start one again"
OTHER_BROWSER = (
    "this sign-in was started in another browser, or this browser did not keep the "
    "broker's sign-in cookie: a sign-in must come back to the browser that started it; "
    "start it again from the portal"
)
UNKNOWN_HANDOFF = (
    "this browser holds no sign-in to finish: the sign-in code was used already, has "
    "expired, or cookies are off; sign in again"
)
# How long the portal has to redeem the one-time code the callback hands the browser.
HANDOFF_TTL_S = 60
# What a browser's binding secret looks like (secrets.token_urlsafe(32)).
BROWSER_SECRET = re.compile(r"^[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True)
class Started:
    """Where to send the browser (the provider), and the callback the provider returns to."""

    url: str
    callback: str


@dataclass(frozen=True)
class SignedIn:
    """A finished sign-in and the portal page to send the browser back to."""

    result: LoginResult
    return_to: str
    tenant_id: str
    identity_source_id: str
    https: bool


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


def check_return_to(value: str | None, portal_paths: Sequence[str]) -> str:
    """A page under one of the configured portal folders (the first one by default).

    Never another site, never the API (another source's ``/start`` would carry the
    browser on to an authorization endpoint a tenant admin chose), never a path that
    only normalises into a portal folder (``..``, encoded slashes)."""
    if value is None or value == "":
        return portal_paths[0]
    path, _, query = value.partition("?")
    where = " or ".join(portal_paths)
    if (
        not PORTAL_PATH.match(path)
        or path.startswith("//")
        or any(segment in (".", "..") for segment in path.split("/"))
        or any(ord(c) <= 32 or ord(c) >= 127 or c in "#\\" for c in query)
    ):
        raise BadRequest(
            f"redirect must be a page of the portal on this broker (a path under {where}), "
            f"not {value!r}",
            reason="redirect_refused",
        )
    lowered = path.lower()
    if lowered == "/api" or lowered.startswith("/api/"):
        raise BadRequest(
            f"redirect {value!r} is an API route, not a portal page: a sign-in only goes "
            f"back to a page under {where}",
            reason="redirect_refused",
        )
    if not any(path.startswith(p) or path + "/" == p for p in portal_paths):
        raise BadRequest(
            f"redirect {value!r} is not a portal page: a sign-in only goes back to a page "
            f"under {where} (the broker's oidc_portal_paths setting)",
            reason="redirect_refused",
        )
    return value


def browser_secret(cookie: str | None) -> str:
    """The browser's binding secret: the one its cookie holds (so sign-ins started in two
    tabs both finish), else a new one."""
    if cookie is not None and BROWSER_SECRET.match(cookie):
        return cookie
    return secrets.token_urlsafe(32)


class OidcSignIn:
    """Starts and finishes OpenID Connect sign-ins for one broker node."""

    def __init__(self, ctx: BrokerContext, login: LoginService) -> None:
        self.ctx = ctx
        self.login = login

    def _oidc(
        self, tenant: str | None, source: str, capability: SourceCapability
    ) -> tuple[str, str, ProviderSignIn]:
        """The source's sign-in at its provider, when it offers ``capability``."""
        view, driver = self.login.source_driver(tenant, source)
        signer = provider_sign_in(driver, capability)
        if signer is not None:
            return view.tenant_id, view.id, signer
        if SourceCapability.PASSWORD in driver.capabilities:
            raise BadRequest(
                f"identity source {source!r} is of kind {view.kind!r}: it takes a username and "
                "password at POST /api/v1/auth/login, not an OpenID Connect sign-in"
            )
        how = "in a browser" if capability is SourceCapability.BROWSER_SIGN_IN else "by device"
        raise BadRequest(f"identity source {source!r} (kind {view.kind!r}) offers no sign-in {how}")

    def _ask(self, tenant_id: str, source_id: str, work: Callable[[], T]) -> T:
        """``work``, a call to the provider, within the bounds every remote identity
        source has: per source and per tenant concurrency, the breaker, the deadline. An
        anonymous start or poll never waits on a provider that does not answer."""
        return self.ctx.sources.call(source_id, f"oidc:{source_id}", work, tenant_id=tenant_id)

    def _flow_driver(self, flow: FlowRecord) -> ProviderSignIn:
        """The sign-in of the flow's source, if it still offers the flow's kind."""
        driver = self.login.driver_by_id(flow.identity_source_id)
        capability = (
            SourceCapability.DEVICE_SIGN_IN
            if flow.kind == "device"
            else SourceCapability.BROWSER_SIGN_IN
        )
        signer = provider_sign_in(driver, capability)
        if signer is None:
            raise BadRequest("the identity source of this sign-in no longer uses OpenID Connect")
        return signer

    def _throttle_start(self, client_address: str | None) -> None:
        """Counts a sign-in start against the client address, before the provider is
        asked anything: each start costs a call to the provider and a row, and needs no
        credential. Refuses (429) while the address has started too many."""
        if not client_address:
            return
        settings = self.ctx.settings
        key = "oidc_start:" + address_key(client_address).partition(":")[2]
        now = utcnow()
        with self.ctx.db.write() as session:
            state = throttle.read(session, [key]).get(key)
            if state is not None and state.locked_until is not None:
                left = (aware(state.locked_until) - now).total_seconds()
                if left > 0:
                    metrics.LOGINS_THROTTLED.labels(key="oidc_start").inc()
                    wait = math.ceil(left)
                    raise TooManySignInsStarted(
                        f"Too many sign-ins were started from your address ({client_address}): "
                        f"wait {wait} seconds before starting another.",
                        reason="sign_in_starts_throttled",
                        retry_after=wait,
                    )
            throttle.count_failure(
                session,
                key,
                now=now,
                window_s=settings.oidc_start_window_s,
                limit=settings.oidc_starts_per_address,
                lockout_s=settings.oidc_start_window_s,
                max_factor=1,
            )

    # --- authorization code with PKCE ---------------------------------------------
    def start(
        self,
        *,
        tenant: str | None,
        source: str,
        return_to: str | None,
        callback_url: str,
        browser: str,
        client_address: str | None = None,
    ) -> Started:
        """A new sign-in: the provider's authorization URL to send the browser to.

        ``browser`` is the secret of the browser's binding cookie; only its hash is kept,
        and the callback must present it."""
        return_to = check_return_to(return_to, self.ctx.settings.oidc_portal_paths)
        tenant_id, source_id, driver = self._oidc(tenant, source, SourceCapability.BROWSER_SIGN_IN)
        self._throttle_start(client_address)
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        redirect_uri = driver.redirect_uri or callback_url
        # Asks the provider's discovery document first: when the provider is down, the
        # user hears so and no flow is written (the start still counted above).
        url = self._ask(
            tenant_id,
            source_id,
            partial(
                driver.authorization_url,
                state=state,
                nonce=nonce,
                code_challenge=_challenge(verifier),
                redirect_uri=redirect_uri,
            ),
        )
        with self.ctx.db.write() as session:
            oidc_flows.create(
                session,
                key=flow_key(state),
                kind="code",
                tenant_id=tenant_id,
                identity_source_id=source_id,
                sealed=self.ctx.secrets.seal(json.dumps({"code_verifier": verifier})),
                ttl_s=driver.sign_in_ttl_s,
                nonce=nonce,
                redirect_uri=redirect_uri,
                return_to=return_to,
                browser_binding=flow_key(browser),
            )
        return Started(url, redirect_uri)

    def finish(
        self,
        *,
        state: str | None,
        code: str | None,
        error: str | None,
        error_description: str | None,
        issuer: str | None,
        client_address: str | None,
        browser: str | None,
    ) -> SignedIn:
        """The provider's callback: check the browser, consume the state, exchange the
        code, log in. ``browser`` is what the binding cookie holds, if anything."""
        if not state:
            raise BadRequest(
                "the callback carries no state: open the sign-in from the portal, not this URL"
            )
        key = flow_key(state)
        with self.ctx.db.read() as session:
            flow = oidc_flows.find(session, key, "code")
        if flow is None:
            raise BadRequest(UNKNOWN_STATE)
        actor = f"oidc:{flow.identity_source_id}"
        if (
            browser is None
            or flow.browser_binding is None
            or not hmac.compare_digest(flow_key(browser), flow.browser_binding)
        ):
            # Someone else's callback URL opened in this browser (login CSRF), or cookies
            # are off. The flow is not consumed: its own browser may still finish it.
            self.login.refused(flow.tenant_id, actor, client_address, "browser_mismatch")
            raise BadRequest(OTHER_BROWSER, reason="browser_mismatch")
        with self.ctx.db.write() as session:
            first = oidc_flows.consume(session, key)
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
            if issuer is not None and issuer != driver.issuer:
                raise BadRequest(
                    f"the callback comes from issuer {issuer!r}, not {driver.issuer!r}",
                    reason="issuer_mismatch",
                )
            if not code:
                raise BadRequest("the callback carries no authorization code")
            verifier = json.loads(self.ctx.secrets.open(flow.sealed))["code_verifier"]
            tokens = self._ask(
                flow.tenant_id,
                flow.identity_source_id,
                partial(
                    driver.exchange_code,
                    code=code,
                    code_verifier=verifier,
                    redirect_uri=flow.redirect_uri,
                ),
            )
            # Checking the ID token may fetch the provider's keys.
            user = self._ask(
                flow.tenant_id, flow.identity_source_id, partial(driver.sign_in, tokens, flow.nonce)
            )
        except DeskbrokerError as exc:
            self.login.refused(
                flow.tenant_id, actor, client_address, exc.extra.get("reason", "oidc_refused")
            )
            raise
        result = self._log_in(flow, user, client_address)
        return SignedIn(
            result,
            flow.return_to or self.ctx.settings.oidc_portal_paths[0],
            flow.tenant_id,
            flow.identity_source_id,
            https=urlsplit(flow.redirect_uri).scheme == "https",
        )

    def _log_in(
        self, flow: FlowRecord, user: ProviderUser, client_address: str | None
    ) -> LoginResult:
        """The broker user bound to the provider's account (issuer + sub), logged in."""
        with self.ctx.db.write() as session:
            binding = oidc_subjects.bind(
                session,
                tenant_id=flow.tenant_id,
                identity_source_id=flow.identity_source_id,
                issuer=user.issuer,
                subject=user.subject,
                username=user.identity.username,
            )
        if binding.taken:
            actor = f"oidc:{flow.identity_source_id}"
            self.login.refused(flow.tenant_id, actor, client_address, "subject_mismatch")
            raise Forbidden(
                f"the broker user {binding.username!r} of this identity source belongs to "
                "another account at the identity provider (another subject), so this account "
                "cannot sign in as it; ask your administrator",
                reason="subject_mismatch",
            )
        identity = replace(user.identity, username=binding.username)
        return self.login.login_identity(
            flow.identity_source_id, identity, client_address=client_address
        )

    # --- the one-time code the portal redeems ------------------------------------
    def hand_off(self, signed: SignedIn, answer: str) -> str:
        """Keeps the sign-in's answer (sealed) for the portal to redeem once, from any
        broker, within ``HANDOFF_TTL_S``; returns the one-time code for the browser."""
        code = secrets.token_urlsafe(32)
        with self.ctx.db.write() as session:
            oidc_flows.create(
                session,
                key=flow_key(code),
                kind="handoff",
                tenant_id=signed.tenant_id,
                identity_source_id=signed.identity_source_id,
                sealed=self.ctx.secrets.seal(answer),
                ttl_s=HANDOFF_TTL_S,
            )
        return code

    def redeem(self, code: str | None) -> str:
        """The answer a one-time code stands for; refused once used or expired."""
        if not code:
            raise BadRequest(UNKNOWN_HANDOFF)
        key = flow_key(code)
        with self.ctx.db.write() as session:
            handoff = oidc_flows.find(session, key, "handoff")
            if handoff is None or not oidc_flows.redeem(session, key):
                raise BadRequest(UNKNOWN_HANDOFF, reason="handoff_refused")
        return self.ctx.secrets.open(handoff.sealed)

    # --- device flow (RFC 8628) ----------------------------------------------------
    def start_device(
        self, *, tenant: str | None, source: str, client_address: str | None = None
    ) -> DeviceStart:
        tenant_id, source_id, driver = self._oidc(tenant, source, SourceCapability.DEVICE_SIGN_IN)
        self._throttle_start(client_address)
        grant = self._ask(tenant_id, source_id, driver.start_device)
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
            answer = self._ask(
                flow.tenant_id, flow.identity_source_id, partial(driver.poll_device, device_code)
            )
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
            user = self._ask(
                flow.tenant_id, flow.identity_source_id, partial(driver.sign_in, answer, None)
            )
        except DeskbrokerError as exc:
            self.login.refused(
                flow.tenant_id, actor, client_address, exc.extra.get("reason", "oidc_refused")
            )
            raise
        return self._log_in(flow, user, client_address)

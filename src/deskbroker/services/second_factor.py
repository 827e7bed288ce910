"""TOTP second factor: enrolment, one-time codes and the login challenge between them.

A password login whose identity source asks for a second factor ends in a ``Challenge``
(``challenges``). ``POST /auth/login/totp`` with the challenge and a code then completes
the login here, through the same ``LoginService.admit`` as any login.

Codes are RFC 6238 TOTP (SHA-1, 6 digits, 30 s: what every authenticator app speaks),
checked one step either side, and each step's code passes once per user.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyotp

from deskbroker import metrics
from deskbroker.domain.accounts import UserRecord
from deskbroker.domain.rules import Identity
from deskbroker.domain.second_factor import SecondFactorMode, SecondFactorStep
from deskbroker.errors import (
    Conflict,
    DeskbrokerError,
    Forbidden,
    InvalidInput,
    TooManyAttempts,
    Unauthorized,
)
from deskbroker.security import TokenClaims
from deskbroker.services.challenges import ChallengeClaims, signer
from deskbroker.services.config_cache import ConfigView, SourceView
from deskbroker.services.context import BrokerContext
from deskbroker.services.login import LoginResult, LoginService
from deskbroker.services.throttle import Checked
from deskbroker.store import claims, events
from deskbroker.store import totp as store
from deskbroker.store.db import Unit

ISSUER = "deskbroker"
# Wrong codes one challenge takes before the user must give their password again.
MAX_CHALLENGE_FAILURES = 5
# One step either side forgives a phone clock 30 s off and a code typed as it turned.
VALID_WINDOW = 1

WRONG_CODE = "Wrong one-time code."
REPLAYED_CODE = "This one-time code was already used; wait for the next one."
LAST_TRY = " That was the last try of this login: log in again with your password."
SPENT = "This login challenge was used up or has expired; log in again with your password."
DISABLED = "This account is disabled; ask your administrator."


@dataclass(frozen=True)
class Enrolment:
    """What an authenticator app needs: shown once, when enrolment starts."""

    secret: str
    uri: str
    issuer: str
    account: str
    digits: int = 6
    period_s: int = 30


def new_secret() -> str:
    """160 random bits in base32, the length RFC 4226 recommends."""
    return pyotp.random_base32()


def enrolment(secret: str, username: str, tenant_name: str) -> Enrolment:
    account = f"{username} ({tenant_name})"
    uri = pyotp.TOTP(secret).provisioning_uri(name=account, issuer_name=ISSUER)
    return Enrolment(secret=secret, uri=uri, issuer=ISSUER, account=account)


def matching_step(secret: str, code: str, at: float) -> int | None:
    """The time step whose code ``code`` is, within the window; ``None`` for a wrong code."""
    totp = pyotp.TOTP(secret)
    current = totp.timecode(at)
    for offset in range(-VALID_WINDOW, VALID_WINDOW + 1):
        if hmac.compare_digest(totp.at(at, counter_offset=offset), code):
            return current + offset
    return None


def _source(view: ConfigView, tenant_id: str, source_id: str) -> SourceView | None:
    return next((s for s in view.sources_by_tenant.get(tenant_id, []) if s.id == source_id), None)


def _tenant_name(view: ConfigView, tenant_id: str) -> str:
    return next((n for n, t in view.tenants_by_name.items() if t == tenant_id), tenant_id)


class SecondFactorService:
    """Enrolment and the completion of logins that wait for a one-time code."""

    def __init__(self, ctx: BrokerContext, login: LoginService) -> None:
        self.ctx = ctx
        self.login = login
        self.signer = signer(ctx)

    def _open(self, sealed: str) -> str:
        try:
            return self.ctx.secrets.open(sealed)
        except ValueError as exc:
            raise Conflict(
                "Your second factor was sealed with another broker key and cannot be "
                "checked; ask your administrator to reset it."
            ) from exc

    # --- a login waiting for its code ------------------------------------------------
    def enrol_at_login(self, token: str) -> Enrolment:
        """For a challenge of ``required`` mode: a new secret for the user's app."""
        found = self.signer.verify(token)
        if found.step is not SecondFactorStep.ENROL:
            raise Conflict(
                "You are enrolled already: answer with the code your authenticator app shows."
            )
        secret = new_secret()
        with self.ctx.db.write() as session:
            # The user's row first, then the challenge: the order every writer keeps.
            store.state(session, found.user_id)
            if store.open_challenge(session, found.challenge_id, found.user_id) is None:
                raise Unauthorized(SPENT)
            if not store.save_pending(session, found.user_id, self.ctx.secrets.seal(secret)):
                raise Conflict(
                    "An authenticator app was enrolled for you meanwhile; log in again "
                    "with your password and give its code."
                )
        view = self.ctx.cache.current(self.ctx.db)
        return enrolment(secret, found.username, _tenant_name(view, found.tenant_id))

    def complete(self, token: str, code: str, client_address: str | None) -> LoginResult:
        """The challenge and a right code: the login's token and desktops."""
        found = self.signer.verify(token)
        try:
            with self.ctx.db.read() as session:
                # A locked account or address tries no codes either.
                checked = self.login.guard.check(
                    session, found.tenant_id, found.username, client_address
                )
        except TooManyAttempts as exc:
            self.login.record_failure(found.tenant_id, found.username, client_address, exc, None)
            raise
        with self.ctx.db.read() as session:
            record = claims.find_user(session, found.source_id, found.username)
        if record is None or record.id != found.user_id:
            raise Unauthorized(SPENT)
        view = self.ctx.cache.current(self.ctx.db, record.config_version)
        source = _source(view, found.tenant_id, found.source_id)
        if source is None or source.second_factor == SecondFactorMode.OFF.value:
            # The source went away, or stopped asking, since the password step.
            raise Unauthorized(SPENT)
        if record.disabled:
            raise Forbidden(DISABLED)
        limits = self.ctx.user_activity
        account = limits.account(found.source_id, found.username)
        limits.before_sign_in(account, self.ctx.settings.user_sign_ins_per_minute)
        outcome: LoginResult | DeskbrokerError
        with self.ctx.db.write() as session:
            outcome = self._complete(
                session, found, code, record, source, view, client_address, checked
            )
        if isinstance(outcome, DeskbrokerError):
            # After the commit that counted the failure against the challenge: the same
            # path as a wrong password (audit event, account and address counts).
            metrics.LOGINS.labels(result="refused").inc()
            answer = self.login.record_failure(
                found.tenant_id, found.username, client_address, outcome, checked
            )
            if answer is outcome:
                raise outcome
            raise answer from outcome
        limits.signed_in(account)
        metrics.LOGINS.labels(result="ok").inc()
        return outcome

    def _complete(
        self,
        session: Unit,
        found: ChallengeClaims,
        code: str,
        record: UserRecord,
        source: SourceView,
        view: ConfigView,
        client_address: str | None,
        checked: Checked,
    ) -> LoginResult | DeskbrokerError:
        # The user's row first, then the challenge: the order every writer keeps.
        state = store.state(session, record.id)
        challenge = store.open_challenge(session, found.challenge_id, record.id)
        if challenge is None:
            raise Unauthorized(SPENT)
        if state is None or state.sealed is None:
            raise Conflict(
                "Enrol an authenticator app first: POST /api/v1/auth/login/totp/enrol with "
                "this challenge gives the secret to add to it."
            )
        step = matching_step(self._open(state.sealed), code, time.time())
        if step is None or not store.accept_step(session, record.id, step):
            challenge.failures += 1
            message = WRONG_CODE if step is None else REPLAYED_CODE
            if challenge.failures >= MAX_CHALLENGE_FAILURES:
                session.delete(challenge)
                message += LAST_TRY
            reason = "wrong_second_factor" if step is None else "replayed_second_factor"
            return Unauthorized(message, reason=reason)
        session.delete(challenge)
        self.login.guard.succeeded(session, checked)
        if not state.enrolled:
            store.mark_enrolled(session, record.id)
            self._enrolled_event(session, record.tenant_id, record.username, record.id)
        who = Identity(
            username=record.username,
            groups=frozenset(record.groups),
            attributes={k: str(v) for k, v in record.attributes.items()},
            ou=challenge.ou,
            display_name=record.display_name,
            email=record.email,
        )
        return self.login.admit(session, source, who, record, view, client_address)

    @staticmethod
    def _enrolled_event(session: Unit, tenant_id: str, username: str, user_id: str) -> None:
        events.append(
            session, "totp_enrolled", tenant_id=tenant_id, actor=username, user_id=user_id
        )

    # --- a logged-in user's own second factor ----------------------------------------
    def _state(self, session: Unit, who: TokenClaims) -> store.TotpState:
        state = store.state(session, who.user_id)
        if state is None or state.tenant_id != who.tenant_id:
            raise Unauthorized("Your account no longer exists; log in again.")
        return state

    def start_enrolment(self, who: TokenClaims) -> Enrolment:
        secret = new_secret()
        view = self.ctx.cache.current(self.ctx.db)
        with self.ctx.db.write() as session:
            state = self._state(session, who)
            source = _source(view, state.tenant_id, state.identity_source_id)
            if source is None or source.second_factor == SecondFactorMode.OFF.value:
                raise Conflict(
                    "Your identity source does not use a second factor; ask your "
                    "administrator to turn it on."
                )
            if state.enrolled:
                raise Conflict(
                    "You have an authenticator app enrolled already; to replace it, remove "
                    "it first with one of its codes (DELETE /api/v1/me/totp)."
                )
            store.save_pending(session, state.user_id, self.ctx.secrets.seal(secret))
        return enrolment(secret, state.username, _tenant_name(view, state.tenant_id))

    def _check_code(self, session: Unit, state: store.TotpState, code: str) -> None:
        assert state.sealed is not None
        step = matching_step(self._open(state.sealed), code, time.time())
        if step is None:
            raise InvalidInput(
                f"{WRONG_CODE} Give the code the app shows for deskbroker now; if it is "
                "refused again, check the clock of the app's device.",
                reason="wrong_second_factor",
            )
        if not store.accept_step(session, state.user_id, step):
            raise InvalidInput(REPLAYED_CODE, reason="replayed_second_factor")

    def _guarded(self, who: TokenClaims, act: Callable[[Unit], None]) -> None:
        """Run ``act`` (which checks a code) as a sign-in attempt: refused while the
        account is locked, and a wrong code counted like a wrong password, so a stolen
        session token cannot try every code to remove or replace the second factor."""
        guard = self.login.guard
        with guard.serial(who.tenant_id, who.username):
            with self.ctx.db.read() as session:
                checked = guard.check(session, who.tenant_id, who.username, None)
            try:
                with self.ctx.db.write() as session:
                    act(session)
            except InvalidInput as exc:
                if exc.extra.get("reason") not in ("wrong_second_factor", "replayed_second_factor"):
                    raise
                answer = self.login.record_failure(who.tenant_id, who.username, None, exc, checked)
                if answer is exc:
                    raise
                raise answer from exc

    def confirm(self, who: TokenClaims, code: str) -> None:
        """Proves the app holds the secret: from now on, logins ask for its codes."""

        def act(session: Unit) -> None:
            state = self._state(session, who)
            if state.enrolled:
                raise Conflict("Your authenticator app is enrolled already.")
            if state.sealed is None:
                raise Conflict("Nothing to confirm: start enrolment with POST /api/v1/me/totp.")
            self._check_code(session, state, code)
            store.mark_enrolled(session, state.user_id)
            self._enrolled_event(session, state.tenant_id, state.username, state.user_id)

        self._guarded(who, act)

    def remove(self, who: TokenClaims, code: str) -> None:
        """The user drops their own second factor, proving they hold it."""

        def act(session: Unit) -> None:
            state = self._state(session, who)
            if not state.enrolled:
                raise Conflict("You have no authenticator app enrolled.")
            self._check_code(session, state, code)
            store.clear(session, state.user_id)
            events.append(
                session,
                "totp_removed",
                tenant_id=state.tenant_id,
                actor=state.username,
                user_id=state.user_id,
            )

        self._guarded(who, act)

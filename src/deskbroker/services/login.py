"""The login path: authenticate, resolve policy, claim desktops, append one event.

Budget: seven SQL statements for a one-pool policy with a warm cache (lockout check,
find the user, list what they hold, claim, queue, event; SQLite spends one more on the
queue ticket); five when a desktop is free.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, NoReturn, overload

from deskbroker import metrics
from deskbroker.domain.accounts import UserRecord
from deskbroker.domain.offers import queue_estimate_s
from deskbroker.domain.rules import Identity, decide
from deskbroker.domain.second_factor import second_factor_due
from deskbroker.errors import (
    AccountRefused,
    BadRequest,
    DeskbrokerError,
    DirectoryUnavailable,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    TooManyAttempts,
    Unauthorized,
)
from deskbroker.identity.base import (
    Credentials,
    IdentitySourceDriver,
    password_refusal,
    source_kinds,
)
from deskbroker.services.challenges import Challenge, issue_challenge
from deskbroker.services.config_cache import ConfigView, PolicyView, SourceView
from deskbroker.services.context import BrokerContext
from deskbroker.services.directory_bounds import within_bounds
from deskbroker.services.failed_names import FailedNames
from deskbroker.services.source_choice import WRONG_CREDENTIALS, Choice, choose, refuse_a_twin
from deskbroker.services.source_guard import reached_directory
from deskbroker.services.throttle import Checked, SignInGuard
from deskbroker.store import claims, events, queue_rows
from deskbroker.store.claims import HeldDesktop
from deskbroker.store.db import Unit

DISABLED = "This account is disabled; ask your administrator."


@dataclass(frozen=True)
class Offer:
    """What the user has, or waits for, in one pool of their policy."""

    pool_id: str
    pool_name: str
    status: str  # assigned | queued
    desktop: HeldDesktop | None = None
    position: int | None = None
    estimate_s: int | None = None


@dataclass
class LoginResult:
    token: str
    expires_at: int
    user_id: str
    username: str
    tenant_id: str
    role: str
    policy_id: str | None
    offers: list[Offer] = field(default_factory=list)


@dataclass(frozen=True)
class _Verified:
    """Who authenticated, against which source; ``record`` is None on a first login."""

    source: SourceView
    identity: Identity
    record: UserRecord | None
    view: ConfigView
    directory: bool


def _failure_event(
    session: Unit,
    tenant_id: str,
    actor: str,
    client_address: str | None,
    reason: str,
    **extra: Any,
) -> None:
    events.append(
        session,
        "login_failed",
        tenant_id=tenant_id,
        actor=actor[:200],
        detail={"client": client_address or "", "reason": reason, **extra},
    )


class LoginService:
    """Runs the login path for one broker node."""

    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx
        self._drivers: dict[tuple[str, int], IdentitySourceDriver] = {}
        self.guard = SignInGuard(ctx.settings)
        self.failed_names = FailedNames(ctx.settings.effective_secret_key)

    def _driver(self, source: SourceView, version: int) -> IdentitySourceDriver:
        key = (source.id, version)
        driver = self._drivers.get(key)
        if driver is None:
            secrets: dict[str, str] = {}
            if source.secrets_sealed:
                secrets = json.loads(self.ctx.secrets.open(source.secrets_sealed))
            driver = source_kinds()[source.kind](source.params, secrets, self.ctx.hashing)
            # An older configuration's driver of this source lets its connections go.
            for old in [k for k in self._drivers if k[0] == source.id and k[1] < version]:
                self._drivers.pop(old).close()
            self._drivers[key] = driver
        return driver

    def login(
        self,
        username: str,
        password: str,
        *,
        tenant: str | None = None,
        source: str | None = None,
        client_address: str | None = None,
    ) -> LoginResult | Challenge:
        """A token and desktops or, when a second factor is due, a ``Challenge``."""
        started = time.perf_counter()
        try:
            result = self._login(username, password, tenant, source, client_address)
        except Exception:
            metrics.LOGINS.labels(result="refused").inc()
            raise
        outcome = "ok" if isinstance(result, LoginResult) else "second_factor_due"
        metrics.LOGINS.labels(result=outcome).inc()
        metrics.LOGIN_SECONDS.observe(time.perf_counter() - started)
        return result

    def login_identity(
        self, source_id: str, identity: Identity, *, client_address: str | None = None
    ) -> LoginResult:
        """Log in a user whom a source vouched for itself (an OpenID provider's verified
        ID token): no password, then the same path as a password login."""
        started = time.perf_counter()
        try:
            result = self._complete(self._vouched(source_id, identity), client_address)
        except Exception:
            metrics.LOGINS.labels(result="refused").inc()
            raise
        metrics.LOGINS.labels(result="ok").inc()
        metrics.LOGIN_SECONDS.observe(time.perf_counter() - started)
        return result

    def source_driver(
        self, tenant: str | None, source_name: str
    ) -> tuple[SourceView, IdentitySourceDriver]:
        """An enabled identity source of a tenant by name, and its driver."""
        view = self.ctx.cache.current(self.ctx.db)
        tenant_id = view.tenants_by_name.get(tenant or "default")
        found = [
            s for s in view.sources_by_tenant.get(tenant_id or "", []) if s.name == source_name
        ]
        if not found:
            raise NotFound(
                f"tenant {tenant or 'default'!r} has no enabled identity source {source_name!r}"
            )
        return found[0], self._driver(found[0], view.version)

    def driver_by_id(self, source_id: str) -> IdentitySourceDriver:
        """The driver of an enabled identity source, by id."""
        view = self.ctx.cache.current(self.ctx.db)
        source = view.source(source_id)
        if source is not None:
            return self._driver(source, view.version)
        raise Unauthorized("the identity source of this sign-in was removed or disabled")

    def refused(self, tenant_id: str, actor: str, client_address: str | None, reason: str) -> None:
        """A refused sign-in that names no account to throttle (an OpenID sign-in that
        failed before the provider said who it was): the audit event only."""
        with self.ctx.db.write() as session:
            _failure_event(session, tenant_id, actor, client_address, reason)

    def _authenticate(
        self,
        view: ConfigView,
        choice: Choice,
        tenant_id: str,
        username: str,
        password: str,
        source: str | None,
    ) -> _Verified:
        refused: AccountRefused | DirectoryUnavailable | None = None
        elsewhere: BadRequest | None = None
        tried = False
        view, choice = self._chosen_again(view, choice, tenant_id, username, source)
        for found in choice.candidates:
            candidate, name = found.source, found.name
            kind = source_kinds().get(candidate.kind)
            if kind is not None and not kind.accepts_passwords:
                # Its users sign in at their provider; say so only if no source took a password.
                elsewhere = elsewhere or BadRequest(
                    password_refusal(candidate.name), reason="password_not_accepted"
                )
                continue
            tried = True
            record = choice.record(candidate.id, name)
            if record is not None and record.config_version != view.version:
                view = self.ctx.cache.current(self.ctx.db, record.config_version)
            driver = self._driver(candidate, view.version)
            try:
                # Blocking (a directory bind): this runs in FastAPI's thread pool, since
                # the login route is a plain ``def``; a directory's share is bounded.
                check = partial(driver.authenticate, Credentials(name, password), record)
                identity = self.ctx.sources.run(candidate, driver, check)
            except (AccountRefused, DirectoryUnavailable) as exc:
                refused = refused or exc  # another source may still know the user
                continue
            if identity is None or (record is None and not driver.provisions_users):
                continue
            if driver.provisions_users:
                owners = choice.owners
                if identity.username != name:  # the directory's spelling of the name
                    record = choice.record(candidate.id, identity.username)
                    if record is None and identity.username.lower() != name.lower():
                        # Another name altogether, which the first read did not cover.
                        with self.ctx.db.read() as session:
                            owners = claims.find_owners(session, tenant_id, identity.username)
                        record = next(
                            (
                                r
                                for r in owners
                                if r.identity_source_id == candidate.id
                                and r.username == identity.username
                            ),
                            None,
                        )
                if record is None:
                    # A domain routed the bare name here (name != typed): the user named
                    # this directory themselves.
                    by_domain = name != username
                    refuse_a_twin(view, tenant_id, candidate, identity.username, owners, by_domain)
                # A first login read no version with the user: check the view's age.
                view = self.ctx.cache.current(
                    self.ctx.db, record.config_version if record else None
                )
            fresh = {s.id: s for s in view.sources_by_tenant.get(tenant_id, [])}
            return _Verified(
                fresh.get(candidate.id, candidate), identity, record, view, driver.provisions_users
            )
        if refused is None and elsewhere is not None and not tried:
            raise elsewhere
        raise refused or Unauthorized(WRONG_CREDENTIALS)

    def _chosen_again(
        self, view: ConfigView, choice: Choice, tenant_id: str, username: str, source: str | None
    ) -> tuple[ConfigView, Choice]:
        """The view may be behind the database: a source or a rule made a moment ago on
        another broker, or by a tool, which routes this name. The name's rows carry the
        version they were read at; a name with no route at all (a tenant whose sources
        the view does not hold yet) asks for it. Then the sources are chosen again on the
        newer view. Nothing more is read when the view is current."""
        seen = next(
            (r.config_version for r in choice.owners if r.config_version != view.version), None
        )
        if seen is not None:
            newer = self.ctx.cache.current(self.ctx.db, seen)
        elif not choice.candidates:
            newer = self.ctx.cache.current(self.ctx.db, fresh=True)
        else:
            return view, choice
        if newer.version == view.version:
            return view, choice
        with self.ctx.db.read() as session:
            return newer, choose(session, newer, tenant_id, username, source)

    def _vouched(self, source_id: str, identity: Identity) -> _Verified:
        view = self.ctx.cache.current(self.ctx.db)
        source = view.source(source_id)
        if source is None:
            raise Unauthorized("the identity source of this sign-in was removed or disabled")
        with self.ctx.db.read() as session:
            record = claims.find_user(session, source.id, identity.username)
        if record is not None and record.config_version != view.version:
            view = self.ctx.cache.current(self.ctx.db, record.config_version)
            source = next(
                (s for s in view.sources_by_tenant.get(source.tenant_id, []) if s.id == source_id),
                source,
            )
        return _Verified(source, identity, record, view, directory=True)

    def _login(
        self,
        username: str,
        password: str,
        tenant: str | None,
        source: str | None,
        client_address: str | None,
    ) -> LoginResult | Challenge:
        if len(password.encode()) > self.ctx.settings.max_password_bytes:
            raise PayloadTooLarge(
                f"the password is longer than {self.ctx.settings.max_password_bytes} bytes"
            )
        view = self.ctx.cache.peek(self.ctx.db)
        tenant_id = view.tenants_by_name.get(tenant or "default")
        if tenant_id is None:
            # Perhaps a tenant made on another broker (or the CLI) a moment ago.
            view = self.ctx.cache.current(self.ctx.db, fresh=True)
            tenant_id = view.tenants_by_name.get(tenant or "default")
        if tenant_id is None:
            self._unknown_tenant(username, client_address)
        # The check, the password and the counted failure, one attempt at a time per
        # account on this broker: concurrent guesses each see the ones before them.
        with self.guard.serial(tenant_id, username):
            chosen: Choice | BadRequest
            try:
                # One unit: the lockout check, then the name's rows at the routed
                # sources, which decide where the password may go.
                with self.ctx.db.read() as session:
                    checked = self.guard.check(session, tenant_id, username, client_address)
                    try:
                        chosen = choose(session, view, tenant_id, username, source)
                    except BadRequest as exc:  # counted as a failure, outside the unit
                        chosen = exc
            except TooManyAttempts as exc:
                self.record_failure(tenant_id, username, client_address, exc, None)
                raise
            try:
                if isinstance(chosen, BadRequest):
                    raise chosen
                found = self._authenticate(view, chosen, tenant_id, username, password, source)
            except (Unauthorized, AccountRefused, DirectoryUnavailable, BadRequest) as exc:
                answer = self.record_failure(tenant_id, username, client_address, exc, checked)
                if answer is exc:
                    raise
                raise answer from exc
        return self._complete(found, client_address, checked)

    def _unknown_tenant(self, username: str, client_address: str | None) -> NoReturn:
        """A tenant that does not exist is wrong credentials, and answered as any other
        failure is: a locked address gets its 429 whatever tenant it names (answering
        401 there told a locked-out client which tenant names exist), and the failure
        counts against the address, so guessing tenant names is throttled too."""
        with self.ctx.db.read() as session:
            checked = self.guard.check(session, "", username, client_address)
        with self.ctx.db.write() as session:
            locked = self.guard.failed(session, checked, account=False)
        raise locked or Unauthorized(WRONG_CREDENTIALS)

    @overload
    def _complete(self, found: _Verified, client_address: str | None) -> LoginResult: ...

    @overload
    def _complete(
        self, found: _Verified, client_address: str | None, checked: Checked
    ) -> LoginResult | Challenge: ...

    def _complete(
        self, found: _Verified, client_address: str | None, checked: Checked | None = None
    ) -> LoginResult | Challenge:
        """After authentication, whoever vouched: the directory user's row, the disabled
        check, the assignment rule, claims, the login event and the token. ``checked``
        is the password path's lockout check, whose failures a success clears; a password
        sign-in may owe a second factor, and then answers with a ``Challenge``."""
        if found.record is not None and found.record.disabled:
            raise Forbidden(DISABLED)
        if found.directory:
            # Cut once, here (not in the retried unit, which would warn twice): the row,
            # this sign-in's rule and a later second factor's rule all read the same.
            found = replace(found, identity=within_bounds(found.identity, found.source.name))
        limits = self.ctx.user_activity
        account = limits.account(found.source.id, found.identity.username)
        limits.before_sign_in(account, self.ctx.settings.user_sign_ins_per_minute)
        try:
            result = self._complete_once(found, client_address, checked)
        except claims.ConcurrentClaim:
            # The same user's other sign-in took the desktop a moment ago: this unit was
            # rolled back, and its second go finds that desktop held and hands it back.
            result = self._complete_once(found, client_address, checked)
        if isinstance(result, LoginResult):  # a challenge counts once its code is given
            limits.signed_in(account)
        return result

    def _complete_once(
        self, found: _Verified, client_address: str | None, checked: Checked | None
    ) -> LoginResult | Challenge:
        src, who, view = found.source, found.identity, found.view
        with self.ctx.db.write() as session:
            record = found.record
            if found.directory and claims.directory_user_changed(record, who):
                # The directory's user becomes (or stays) a broker user, in the login's
                # own transaction: one statement, and only when something changed.
                record = claims.upsert_directory_user(
                    session,
                    tenant_id=src.tenant_id,
                    identity_source_id=src.id,
                    who=who,
                    known=record,
                )
                if record.disabled:
                    raise Forbidden(DISABLED)
            assert record is not None  # a local source only answers for a known row
            step = second_factor_due(src.second_factor, record.totp_enrolled)
            if checked is not None and step is not None:
                # The password was right; desktops and token wait for the second factor,
                # and so does clearing the account's failures.
                return issue_challenge(self.ctx, session, src, record, who.ou, step)
            if checked is not None:
                self.guard.succeeded(session, checked)
            return self.admit(session, src, who, record, view, client_address)

    def admit(
        self,
        session: Unit,
        src: SourceView,
        who: Identity,
        record: UserRecord,
        view: ConfigView,
        client_address: str | None,
    ) -> LoginResult:
        """In the caller's write unit, for a user every factor vouched for: the rule,
        policy and role, claims, the login event and the token."""
        rule = decide(src.rules, who, client_address, datetime.now(UTC))
        policy = view.policies.get(rule.policy_id or "") if rule is not None else None
        offers = self._claim_all(
            session, record, policy, view, client_address, rule.rule_id if rule else None
        )
        role = record.role if record.role != "user" or rule is None else rule.role
        token, expires = self.ctx.signer.issue(
            user_id=record.id,
            tenant_id=record.tenant_id,
            role=role,
            username=record.username,
            policy_id=policy.id if policy else None,
            generation=record.token_generation,
        )
        return LoginResult(
            token=token,
            expires_at=expires,
            user_id=record.id,
            username=record.username,
            tenant_id=record.tenant_id,
            role=role,
            policy_id=policy.id if policy else None,
            offers=offers,
        )

    def record_failure(
        self,
        tenant_id: str,
        username: str,
        client_address: str | None,
        exc: DeskbrokerError,
        checked: Checked | None,
    ) -> DeskbrokerError:
        """The one place a refused sign-in is written (a wrong password, a refused
        account, a wrong one-time code): the audit event and, when the user is to blame
        (not an unreachable directory), a failure counted against the account and the
        address. Returns the error to answer with: the lockout, when this failure caused
        one."""
        answer: DeskbrokerError = exc
        with self.ctx.db.write() as session:
            # Neither an unreachable directory nor a source that takes no passwords is
            # the user's failure.
            if checked is not None and not isinstance(exc, (DirectoryUnavailable, BadRequest)):
                answer = self.guard.failed(session, checked) or exc
            elif checked is not None and reached_directory(exc):
                # A directory that did not answer still cost a call: counted against the
                # address (not the account, which an outage must not lock).
                answer = self.guard.failed(session, checked, account=False) or exc
            _failure_event(
                session,
                tenant_id,
                # A password typed into the name field is not kept: see failed_names.
                self.failed_names.for_audit(
                    session, tenant_id, username, account=isinstance(exc, AccountRefused)
                ),
                client_address,
                exc.extra.get("reason", "wrong_credentials"),
                **({"locked_out": answer.extra["reason"]} if answer is not exc else {}),
            )
        return answer

    def _claim_all(
        self,
        session: Unit,
        record: UserRecord,
        policy: PolicyView | None,
        view: ConfigView,
        client_address: str | None,
        rule_id: str | None,
    ) -> list[Offer]:
        offers: list[Offer] = []
        detail: dict[str, Any] = {"client": client_address or "", "rule": rule_id}
        if record.queued:
            # A queue's serving may be giving this user a desktop right now: wait for it
            # (it holds their place), then count what they hold. Counted before it
            # committed (on PostgreSQL a read sees only what had), this sign-in claimed a
            # second desktop of the pool beside the one the queue gave them.
            queue_rows.hold_places(session, record.id)
        # A user this sign-in created holds nothing yet: one statement less for every
        # first sign-in of a directory user.
        held = [] if record.created_now else claims.held_desktops(session, record.id)
        budget = policy.max_desktops_per_user if policy else 0
        total = len(held)
        for entry in policy.entries if policy else ():
            pools = {entry.pool_id, entry.backup_pool_id}
            mine = [d for d in held if d.pool_id in pools]
            offers.extend(Offer(entry.pool_id, entry.pool_name, "assigned", d) for d in mine)
            need = min(entry.desktops - len(mine), budget - total)
            for _ in range(max(0, need)):
                got = claims.claim(
                    session,
                    tenant_id=record.tenant_id,
                    pool_id=entry.pool_id,
                    user_id=record.id,
                    kind=entry.assignment.value,
                    ordering=entry.ordering,
                    skip_lost=entry.skip_lost_agents,
                    slot=claims.free_slot(held, entry.pool_id),
                )
                if got is None and entry.backup_pool_id:
                    got = claims.claim(
                        session,
                        tenant_id=record.tenant_id,
                        pool_id=entry.backup_pool_id,
                        user_id=record.id,
                        kind=entry.assignment.value,
                        ordering=entry.ordering,
                        skip_lost=entry.skip_lost_agents,
                        slot=claims.free_slot(held, entry.backup_pool_id),
                    )
                if got is not None:
                    metrics.CLAIMS.labels(result="assigned").inc()
                    held.append(got)
                    total += 1
                    if record.queued:
                        queue_rows.leave_queue(session, pool_id=entry.pool_id, user_id=record.id)
                    offers.append(Offer(entry.pool_id, entry.pool_name, "assigned", got))
                    detail.setdefault("assigned", []).append(got.id)
                    continue
                metrics.CLAIMS.labels(result="queued").inc()
                place = queue_rows.enqueue(
                    session,
                    tenant_id=record.tenant_id,
                    pool_id=entry.pool_id,
                    user_id=record.id,
                    assignment=entry.assignment.value,
                    ordering=entry.ordering.value,
                    skip_lost=entry.skip_lost_agents,
                )
                position = place.position
                estimate = queue_estimate_s(position, place.release_interval_s)
                offers.append(
                    Offer(entry.pool_id, entry.pool_name, "queued", None, position, estimate)
                )
                detail.setdefault("queued", []).append(
                    {"pool": entry.pool_id, "position": position}
                )
                break
        events.append(
            session,
            "login",
            tenant_id=record.tenant_id,
            actor=record.username,
            user_id=record.id,
            detail=detail,
        )
        return offers

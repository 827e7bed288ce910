"""Brute-force protection for sign-ins: per account and per client address.

Every failed sign-in counts against the account's name (in its tenant, whatever domain
form was typed, so rotating ``alice``, ``alice@corp``, ``CORP\\alice`` gains nothing) and
against the client address. Too many failures in the window lock the key; while locked,
sign-ins for it are refused before any password is checked, in words that say for how
long. A successful sign-in clears the account's count; an address is only cleared by
time or an administrator, so one good account cannot launder an address's failures.
A directory that cannot be reached is not the user's failure and counts nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from deskbroker import metrics
from deskbroker.config import Settings
from deskbroker.domain.timestamps import aware
from deskbroker.errors import DeskbrokerError, TooManyAttempts
from deskbroker.identity.base import split_domain
from deskbroker.store import throttle
from deskbroker.store.db import Unit
from deskbroker.store.tables import utcnow

# A lockout doubles on each repeat, up to this many times the first.
MAX_FACTOR = 8


def account_name(username: str) -> str:
    """The one spelling of an account's name that its failures count under: every
    ``DOMAIN\\`` and ``@domain`` taken off (however many were stacked), compatibility
    forms folded (NFKC) and case folded, so no spelling buys more guesses."""
    name = unicodedata.normalize("NFKC", username).strip()
    while True:
        bare, domain = split_domain(name)
        if domain is None or bare == name:
            break
        name = bare.strip()
    return name.casefold()[:200]


def name_tag(secret: str, tenant_id: str, username: str) -> str:
    """A keyed hash (HMAC-SHA256 with a key derived from the broker's secret, 16 hex
    digits) of the name as its failures count: what the lockout table and the audit
    trail keep instead of a typed name, which may be a password typed one field early.
    Without the broker's secret it cannot be tested against guesses."""
    key = hashlib.sha256(("failed-sign-in-names:" + secret).encode()).digest()
    digest = hmac.new(key, f"{tenant_id}:{account_name(username)}".encode(), hashlib.sha256)
    return digest.hexdigest()[:16]


def account_key(secret: str, tenant_id: str, username: str) -> str:
    """The throttle key of an account: its tenant and the tag of its name, never the
    name as typed (a lockout listing shows the name only of a user it matches)."""
    return f"account:{tenant_id}:#{name_tag(secret, tenant_id, username)}"


def address_key(address: str) -> str:
    """An IPv4 address as it is; an IPv6 address by its /64, which one host can roam."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"address:{address[:80]}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"address:{ip.ipv4_mapped}"
        return f"address:{ipaddress.ip_network(f'{ip}/64', strict=False)}"
    return f"address:{ip}"


# Sign-ins of one account that may wait in line on one broker (the one being checked
# included); more are refused at once, so a flood of one name (at a directory that
# hangs, say) cannot park the request threads every tenant shares.
MAX_IN_LINE = 8
IN_LINE_RETRY_S = 5


class SignInsInProgress(DeskbrokerError):
    """Too many sign-ins of one account are already being checked on this broker."""

    status = 429
    title = "Too many sign-ins at once"


class _AccountLocks:
    """One lock per account name in use, so one broker checks an account's guesses one
    at a time: each sees the failures counted before it, and a burst of concurrent
    guesses cannot all pass the check before the first failure is written. Exact names,
    not stripes of a hash: a sign-in waiting on a hung directory must not hold up
    another tenant's account that happens to share its stripe."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def of(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._held.get(key) or (threading.Lock(), 0)
            if users >= MAX_IN_LINE:
                raise SignInsInProgress(
                    f"{users} sign-ins for this account are already being checked; try "
                    f"again in {IN_LINE_RETRY_S} seconds.",
                    reason="sign_ins_in_progress",
                    retry_after=IN_LINE_RETRY_S,
                )
            self._held[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._held[key]
                if users == 1:
                    del self._held[key]
                else:
                    self._held[key] = (lock, users - 1)


def _minutes(seconds: float) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


@dataclass(frozen=True)
class Checked:
    """What a sign-in's pre-check read: whether the account has failures to clear."""

    account: str
    address: str | None
    account_counted: bool
    address_text: str | None = None


class SignInGuard:
    """Decides whether a sign-in may be tried, and counts the ones that fail."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.locks = _AccountLocks()

    def serial(self, tenant_id: str, username: str) -> AbstractContextManager[None]:
        """Held from the check to the counted failure: an account's attempts on this
        broker go one at a time."""
        return self.locks.of(account_key(self.settings.effective_secret_key, tenant_id, username))

    def check(self, session: Unit, tenant_id: str, username: str, address: str | None) -> Checked:
        """Refuse (``TooManyAttempts``) while the account or the address is locked."""
        account = account_key(self.settings.effective_secret_key, tenant_id, username)
        addr = address_key(address) if address else None
        states = throttle.read(session, [account, *([addr] if addr else [])])
        now = utcnow()
        for key in (account, addr):
            state = states.get(key or "")
            if state is None or state.locked_until is None:
                continue
            left = (aware(state.locked_until) - now).total_seconds()
            if left > 0:
                metrics.LOGINS_THROTTLED.labels(key=key.partition(":")[0] if key else "").inc()
                raise self._refusal(key == account, address, left)
        return Checked(account, addr, account in states, address)

    def _refusal(self, is_account: bool, address: str | None, left: float) -> TooManyAttempts:
        wait = math.ceil(left)
        if is_account:
            return TooManyAttempts(
                "Too many failed sign-ins for this account: it is locked for "
                f"{_minutes(left)}. Try again later, or ask your administrator to unlock it.",
                reason="account_locked_out",
                retry_after=wait,
            )
        return TooManyAttempts(
            f"Too many failed sign-ins from your address ({address}): sign-ins from it are "
            f"refused for {_minutes(left)}.",
            reason="address_locked_out",
            retry_after=wait,
        )

    def failed(
        self, session: Unit, checked: Checked, *, account: bool = True
    ) -> TooManyAttempts | None:
        """Count a failure against the account (unless ``account`` is false) and the
        address, in the caller's transaction; returns the refusal to give instead when
        this failure locked one."""
        s = self.settings
        now = utcnow()
        locked: TooManyAttempts | None = None
        limits = [(checked.account, s.login_max_failures_per_account)] if account else []
        if checked.address:
            limits.append((checked.address, s.login_max_failures_per_address))
        for key, limit in limits:
            until = throttle.count_failure(
                session,
                key,
                now=now,
                window_s=s.login_failure_window_s,
                limit=limit,
                lockout_s=s.login_lockout_s,
                max_factor=MAX_FACTOR,
            )
            if until is not None and locked is None:
                address = checked.address_text
                locked = self._refusal(
                    key == checked.account, address, (until - now).total_seconds()
                )
        return locked

    def succeeded(self, session: Unit, checked: Checked) -> None:
        """A good sign-in clears the account's failures (only when it had some: no write
        on the usual path)."""
        if checked.account_counted:
            throttle.forget(session, [checked.account])

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

import math
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from deskbroker import metrics
from deskbroker.config import Settings
from deskbroker.errors import TooManyAttempts
from deskbroker.identity.base import split_domain
from deskbroker.store import throttle
from deskbroker.store.tables import utcnow

# A lockout doubles on each repeat, up to this many times the first.
MAX_FACTOR = 8


def account_key(tenant_id: str, username: str) -> str:
    bare, _ = split_domain(username.strip())
    return f"account:{tenant_id}:{bare.lower()[:200]}"


def address_key(address: str) -> str:
    return f"address:{address[:80]}"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)


def _minutes(seconds: float) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


@dataclass(frozen=True)
class Checked:
    """What a sign-in's pre-check read: whether the account has failures to clear."""

    account: str
    address: str | None
    account_counted: bool


class SignInGuard:
    """Decides whether a sign-in may be tried, and counts the ones that fail."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def check(
        self, session: Session, tenant_id: str, username: str, address: str | None
    ) -> Checked:
        """Refuse (``TooManyAttempts``) while the account or the address is locked."""
        account = account_key(tenant_id, username)
        addr = address_key(address) if address else None
        states = throttle.read(session, [account, *([addr] if addr else [])])
        now = utcnow()
        for key in (account, addr):
            state = states.get(key or "")
            if state is None or state.locked_until is None:
                continue
            left = (_aware(state.locked_until) - now).total_seconds()
            if left > 0:
                metrics.LOGINS_THROTTLED.labels(key=key.partition(":")[0] if key else "").inc()
                raise self._refusal(key == account, address, left)
        return Checked(account, addr, account in states)

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

    def failed(self, session: Session, checked: Checked) -> TooManyAttempts | None:
        """Count a failure against the account and the address, in the caller's
        transaction; returns the refusal to give instead when this failure locked one."""
        s = self.settings
        now = utcnow()
        locked: TooManyAttempts | None = None
        limits = [(checked.account, s.login_max_failures_per_account)]
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
                address = checked.address.partition(":")[2] if checked.address else None
                locked = self._refusal(
                    key == checked.account, address, (until - now).total_seconds()
                )
        return locked

    def succeeded(self, session: Session, checked: Checked) -> None:
        """A good sign-in clears the account's failures (only when it had some: no write
        on the usual path)."""
        if checked.account_counted:
            throttle.forget(session, [checked.account])

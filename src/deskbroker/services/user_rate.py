"""How often one account may sign in, and one user connect, in a minute.

A sign-in and a connect each write rows (the user's, an event, often a session), and
each event is fanned out to the tenant's webhooks. A person signs in a few times a day;
a script with a user's password could sign in, or connect, as fast as the broker
answers, and grow the database by a row or three each time for as long as the events
are kept. So each is counted in a sliding minute (``services/rate_window.py``, per
worker process) and the one past the limit is refused with 429 and ``Retry-After``,
nothing written.

Sign-ins are counted per account (its identity source and its name as the source knows
it, whatever the spelling typed), once complete: the password right and, when one is
due, the second factor too. So nobody without every factor can use up an account's
sign-ins. The count is looked at once the account is known (after the password, or the
provider's word), before anything is written. A shared account (a classroom's kiosks)
signs in many times a minute: the default leaves room for that. Connects are counted
per user, once the token is known to be the holder's current one, so a revoked copy
counts for nothing.
"""

from __future__ import annotations

from deskbroker.errors import TooManyRequests
from deskbroker.services.rate_window import SlidingWindows


class UserActivityLimiter:
    """This worker's count of each account's sign-ins and each user's connects."""

    def __init__(self) -> None:
        self.sign_ins = SlidingWindows()
        self.connects = SlidingWindows()

    @staticmethod
    def account(source_id: str, username: str) -> str:
        """The key of an account: its source and its name as the source knows it, so
        every spelling of one account (``u``, ``u@corp.example``, ``CORP\\u``) counts as
        one."""
        return f"{source_id}\0{username.strip().casefold()}"

    def before_sign_in(self, account: str, limit: int) -> None:
        """``TooManyRequests`` when the account signed in ``limit`` times in the last
        minute; counts nothing (``signed_in`` does, once the sign-in is complete)."""
        wait = self.sign_ins.wait(account, limit)
        if wait:
            raise TooManyRequests(
                f"this account signed in more than {limit} times in the last minute "
                "(DESKBROKER_USER_SIGN_INS_PER_MINUTE); nothing was recorded. "
                f"Sign in again in {wait} s (Retry-After); if nobody should be signing in "
                "this often, the account's password may be in a script",
                retry_after=wait,
            )

    def signed_in(self, account: str) -> None:
        """Count a complete sign-in: the password and the second factor when one was due
        (one let through with others at the same moment may go past the limit: counted
        all the same)."""
        self.sign_ins.count(account)

    def connect(self, user_id: str, limit: int) -> None:
        """Count one connect of ``user_id``; ``TooManyRequests`` when ``limit`` were
        counted in the last minute already (and this one is not)."""
        instant, wait = self.connects.admit(user_id, limit)
        if instant is None:
            raise TooManyRequests(
                f"you asked to connect more than {limit} times in the last minute "
                "(DESKBROKER_USER_CONNECTS_PER_MINUTE); nothing was recorded. "
                f"Connect again in {wait} s (Retry-After)",
                retry_after=wait,
            )

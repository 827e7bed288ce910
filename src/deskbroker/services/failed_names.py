"""What a refused sign-in's audit event calls the account it tried.

People type their password into the user-name field (one field too early, or the name
and password swapped). An event row lives for the retention period and is read by every
administrator of the tenant, so a name that is nobody's account is not stored as typed:
it becomes ``unknown name #<tag>``, a keyed hash (HMAC-SHA256 with a key derived from the
broker's secret, 16 hex digits) of the name as the lockout counts it.

Why a keyed hash and not a plain hash or a truncation: a plain SHA-256 of a short
password is reversed by a dictionary in seconds by whoever reads the table; a prefix
gives away the password's first characters. The tag still shows an administrator that
one unknown name failed forty times (a spraying script), and nothing more; without the
broker's secret it cannot be tested against guesses. A name that is a user's (any source
of the tenant, any letter case) or that a directory vouched is an account (it refused it
as disabled, locked or expired) is stored as typed, since it is no secret. A directory
user who never signed in and now mistypes their password is therefore a tag too: the
directory does not say whether the name or the password was wrong.
"""

from __future__ import annotations

from deskbroker.identity.base import split_domain
from deskbroker.services.throttle import name_tag
from deskbroker.store import accounts
from deskbroker.store.db import Unit

UNKNOWN = "unknown name #"


class FailedNames:
    """Names refused sign-ins as the audit trail may keep them."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def tag(self, tenant_id: str, typed: str) -> str:
        """The stored stand-in for a name that is nobody's account (the same tag as the
        name's lockout counter, so the two can be matched)."""
        return UNKNOWN + name_tag(self._secret, tenant_id, typed)

    def for_audit(self, session: Unit, tenant_id: str, typed: str, *, account: bool) -> str:
        """``typed`` when it names an account (``account``: a directory said so, as when
        it refuses a disabled user), or a user of the tenant (as typed, or as name@domain
        of a source with that domain); else its tag. One indexed read, on the refused path
        only (the login's statement budget is untouched)."""
        if account:
            return typed[:200]
        name = typed.strip()
        bare, domain = split_domain(name)
        # Only the domain of a source makes ``bare`` the account: "p@ssw0rd" is no
        # sign that user "p" typed it.
        known = accounts.is_account_name(session, tenant_id, name, bare, domain)
        return typed[:200] if known else self.tag(tenant_id, typed)

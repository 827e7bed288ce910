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

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from deskbroker.identity.base import split_domain
from deskbroker.services.throttle import name_tag
from deskbroker.store.claims import folded_name
from deskbroker.store.tables import IdentitySource, User

UNKNOWN = "unknown name #"


class FailedNames:
    """Names refused sign-ins as the audit trail may keep them."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def tag(self, tenant_id: str, typed: str) -> str:
        """The stored stand-in for a name that is nobody's account (the same tag as the
        name's lockout counter, so the two can be matched)."""
        return UNKNOWN + name_tag(self._secret, tenant_id, typed)

    def for_audit(self, session: Session, tenant_id: str, typed: str, *, account: bool) -> str:
        """``typed`` when it names an account (``account``: a directory said so, as when
        it refuses a disabled user), or a user of the tenant (as typed, or as name@domain
        of a source with that domain); else its tag. One indexed read, on the refused path
        only (the login's statement budget is untouched)."""
        if account:
            return typed[:200]
        name = typed.strip()
        bare, domain = split_domain(name)
        query = select(User.id).where(User.tenant_id == tenant_id)
        if domain is None:
            query = query.where(folded_name(name))
        else:
            # Only the domain of a source makes ``bare`` the account: "p@ssw0rd" is no
            # sign that user "p" typed it.
            of_domain = or_(
                IdentitySource.domain == domain,
                IdentitySource.domain.startswith(domain + ".", autoescape=True),
            )
            query = query.join(IdentitySource, IdentitySource.id == User.identity_source_id).where(
                or_(folded_name(name), and_(folded_name(bare), of_domain))
            )
        known = session.scalar(query.limit(1))
        return typed[:200] if known is not None else self.tag(tenant_id, typed)

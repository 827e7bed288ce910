"""One error hierarchy for the whole broker, rendered as application/problem+json."""

from __future__ import annotations

from typing import Any, TypeVar


class DeskbrokerError(Exception):
    """Base of every error the broker reports to a person. ``status`` is the HTTP code."""

    status = 500
    title = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidInput(DeskbrokerError):
    status = 422
    title = "Invalid input"


class BadRequest(DeskbrokerError):
    status = 400
    title = "Bad request"


class NotFound(DeskbrokerError):
    status = 404
    title = "Not found"


class Conflict(DeskbrokerError):
    status = 409
    title = "Conflict"


class QuotaReached(Conflict):
    """A tenant's quota (desktops, concurrent sessions) leaves no room for this."""

    title = "Quota reached"


class Unauthorized(DeskbrokerError):
    status = 401
    title = "Not authenticated"


class Forbidden(DeskbrokerError):
    status = 403
    title = "Forbidden"


class PayloadTooLarge(DeskbrokerError):
    status = 413
    title = "Payload too large"


class TooManyAttempts(DeskbrokerError):
    """Sign-ins refused for a while after too many failures; ``retry_after`` (in
    ``extra``) is the number of seconds until the next attempt is heard."""

    status = 429
    title = "Too many failed sign-ins"


class TooManySignInsStarted(TooManyAttempts):
    """OpenID Connect sign-ins started too often from one client address (each costs a
    call to the provider); ``retry_after`` as for ``TooManyAttempts``."""

    title = "Too many sign-ins started"


class TooManyRequests(DeskbrokerError):
    """A per-tenant or per-broker limit of things open at once is reached; ``retry_after``
    (in ``extra``) says when to try again."""

    status = 429
    title = "Too many requests"


class Unavailable(DeskbrokerError):
    status = 503
    title = "Service unavailable"


class DirectoryUnavailable(Unavailable):
    """No server of a directory (LDAP, Active Directory) answered, or it refused the broker."""

    title = "Directory unreachable"


class AccountRefused(Forbidden):
    """The directory refuses the account itself: locked, disabled, expired password.

    ``reason`` (in ``extra``) is one of ``locked``, ``disabled``, ``password_expired``,
    ``account_expired``."""

    title = "Login refused"


class NotSent(Exception):
    """A call the broker refused to make before anything went out (every helper place
    held by calls still hanging, say): the remote cannot have acted on it. Drivers raise
    their own error from it; the engine reads it in the chain (a create that was never
    sent is safe to try again)."""


class CenterError(DeskbrokerError):
    """A center (infrastructure) refused or failed an operation. ``unanswered``: it did
    not answer within its deadline (what was asked may have been done, and the next
    call to it is likely to wait as long): work going through many calls stops there."""

    status = 502
    title = "Center error"
    unanswered = False


CE = TypeVar("CE", bound=CenterError)


def unanswered(exc: CE) -> CE:
    """``exc``, marked as a center that did not answer in time (``CenterError.unanswered``)."""
    exc.unanswered = True
    return exc


class IdentityProviderUnavailable(Unavailable):
    """An OpenID provider did not answer (down, unreachable, or answering 5xx)."""

    title = "Identity provider unreachable"


class IdentityProviderError(DeskbrokerError):
    """An OpenID provider answered, but not as the broker's configuration expects
    (unknown client, wrong secret, a discovery document for another issuer)."""

    status = 502
    title = "Identity provider error"


class SignInPending(DeskbrokerError):
    """A device sign-in is not finished yet: the user has not approved it at the provider.

    ``error`` (in ``extra``) is ``authorization_pending`` or ``slow_down`` and
    ``retry_after_s`` says when to ask again."""

    status = 428
    title = "Sign-in pending"

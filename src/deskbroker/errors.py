"""One error hierarchy for the whole broker, rendered as application/problem+json."""

from __future__ import annotations

from typing import Any


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


class CenterError(DeskbrokerError):
    """A center (infrastructure) refused or failed an operation."""

    status = 502
    title = "Center error"

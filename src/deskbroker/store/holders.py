"""The rows a request's token is checked against: its user, and an API token's own row.

A user token carries a generation; bumping the user's generation revokes every token
made before. An API token is read on every use (revoked, expired, its user disabled) and
its last use written at most now and then by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select, update

from deskbroker.store.db import Unit
from deskbroker.store.tables import ApiToken, User


@dataclass(frozen=True)
class TokenHolder:
    """An API token's row joined with its user's: what decides whether it still works."""

    scopes: list[str]
    revoked_at: datetime | None
    expires_at: datetime
    last_used_at: datetime | None
    role: str
    disabled: bool
    tenant_id: str


@dataclass(frozen=True)
class UserHolder:
    """What a user token is checked against on every request."""

    disabled: bool
    role: str
    token_generation: int
    tenant_id: str


def api_token_holder(session: Unit, token_id: str, user_id: str) -> TokenHolder | None:
    """The API token ``token_id`` of ``user_id`` and its user, in one statement."""
    row = session.execute(
        select(
            ApiToken.scopes,
            ApiToken.revoked_at,
            ApiToken.expires_at,
            ApiToken.last_used_at,
            User.role,
            User.disabled,
            User.tenant_id,
        )
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.id == token_id, ApiToken.user_id == user_id)
    ).first()
    if row is None:
        return None
    return TokenHolder(
        scopes=list(row.scopes),
        revoked_at=row.revoked_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        role=str(row.role),
        disabled=bool(row.disabled),
        tenant_id=str(row.tenant_id),
    )


def note_api_token_use(session: Unit, token_id: str, now: datetime) -> None:
    """Record when the API token was last used."""
    session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))


# Read on every request a user token makes: built once, with a bound parameter.
_USER_HOLDER = select(User.disabled, User.role, User.token_generation, User.tenant_id).where(
    User.id == bindparam("user_id")
)


def user_holder(session: Unit, user_id: str) -> UserHolder | None:
    """The user row's token-relevant columns, or ``None`` when the user is gone."""
    row = session.execute(_USER_HOLDER, {"user_id": user_id}).first()
    if row is None:
        return None
    return UserHolder(bool(row[0]), str(row[1]), int(row[2] or 0), str(row[3]))


def bump_token_generation(session: Unit, user_id: str) -> None:
    """Every user token of this user stops working at its next request."""
    session.execute(
        update(User)
        .where(User.id == user_id)
        .values(token_generation=User.token_generation + 1)
        .execution_options(synchronize_session=False)
    )

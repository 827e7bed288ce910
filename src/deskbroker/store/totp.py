"""The SQL of the TOTP second factor: a user's sealed secret, used steps and challenges."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from deskbroker.store.tables import LoginChallenge, User, utcnow


@dataclass(frozen=True)
class TotpState:
    """A user's second factor as stored: the sealed secret and whether it is confirmed."""

    user_id: str
    tenant_id: str
    identity_source_id: str
    username: str
    sealed: str | None
    enrolled: bool


def state(session: Session, user_id: str) -> TotpState | None:
    """The user's second factor, locked for the rest of the transaction."""
    row = session.execute(
        select(
            User.id,
            User.tenant_id,
            User.identity_source_id,
            User.username,
            User.totp_sealed,
            User.totp_enrolled_at,
        )
        .where(User.id == user_id)
        .with_for_update()
    ).first()
    if row is None:
        return None
    return TotpState(row[0], row[1], row[2], row[3], row[4], row[5] is not None)


def save_pending(session: Session, user_id: str, sealed: str) -> bool:
    """Store a new secret for a user not enrolled yet; False when they enrolled meanwhile."""
    result = session.execute(
        update(User)
        .where(User.id == user_id, User.totp_enrolled_at.is_(None))
        .values(totp_sealed=sealed, totp_last_step=None)
    )
    return int(result.rowcount or 0) == 1  # type: ignore[attr-defined]


def accept_step(session: Session, user_id: str, step: int) -> bool:
    """Spend a time step's code, atomically: False when it, or a later one, was spent.

    One conditional statement, so two brokers given the same code at once accept it once.
    """
    result = session.execute(
        update(User)
        .where(
            User.id == user_id,
            or_(User.totp_last_step.is_(None), User.totp_last_step < step),
        )
        .values(totp_last_step=step)
    )
    return int(result.rowcount or 0) == 1  # type: ignore[attr-defined]


def mark_enrolled(session: Session, user_id: str, now: datetime | None = None) -> None:
    session.execute(update(User).where(User.id == user_id).values(totp_enrolled_at=now or utcnow()))


def clear(session: Session, user_id: str) -> None:
    """Forget a user's second factor and every login waiting for it."""
    session.execute(
        update(User)
        .where(User.id == user_id)
        .values(totp_sealed=None, totp_enrolled_at=None, totp_last_step=None)
    )
    session.execute(delete(LoginChallenge).where(LoginChallenge.user_id == user_id))


def add_challenge(
    session: Session,
    *,
    challenge_id: str,
    tenant_id: str,
    user_id: str,
    ou: str,
    expires_at: datetime,
) -> None:
    # The user's expired challenges go with the new one's arrival: no sweep needed.
    session.execute(
        delete(LoginChallenge).where(
            LoginChallenge.user_id == user_id, LoginChallenge.expires_at < utcnow()
        )
    )
    session.add(
        LoginChallenge(
            id=challenge_id, tenant_id=tenant_id, user_id=user_id, ou=ou, expires_at=expires_at
        )
    )


def open_challenge(session: Session, challenge_id: str, user_id: str) -> LoginChallenge | None:
    """The challenge, locked, if it still waits for this user."""
    found = session.execute(
        select(LoginChallenge)
        .where(
            LoginChallenge.id == challenge_id,
            LoginChallenge.user_id == user_id,
            LoginChallenge.expires_at >= utcnow(),
        )
        .with_for_update()
    ).scalar_one_or_none()
    return found

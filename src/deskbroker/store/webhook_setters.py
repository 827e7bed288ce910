"""Webhook setters (and API token holders) looked up in their directory again, the SQL:
which directory users set up enabled webhooks or hold live API tokens, a user's row held
while what the directory said is written, and the tokens of a user it no longer knows
revoked.

``users.updated_at`` of a directory user is when the broker last refreshed the row from
the directory (a sign-in that changed something, or the re-check), so the least recently
refreshed setters come first without a column of their own.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from deskbroker.domain.accounts import UserRecord
from deskbroker.store.tables import ApiToken, User, Webhook


def directory_setters(
    session: Session, source_ids: Collection[str], limit: int, now: datetime
) -> list[UserRecord]:
    """At most ``limit`` enabled users of ``source_ids`` who set up an enabled webhook or
    hold an API token neither revoked nor expired at ``now``:
    each source's least recently refreshed first, the sources taken in turn (every
    source's first, then every source's second...), so a source whose directory does not
    answer, its setters never refreshed, does not keep the others' from their turn. One
    query."""
    if not source_ids or limit <= 0:
        return []
    setting = select(Webhook.set_by_user_id).where(
        Webhook.enabled.is_(True), Webhook.set_by_user_id.is_not(None)
    )
    turn = (
        func.row_number()
        .over(partition_by=User.identity_source_id, order_by=(User.updated_at, User.id))
        .label("turn")
    )
    ranked = (
        select(
            User.id,
            User.tenant_id,
            User.identity_source_id,
            User.username,
            User.display_name,
            User.role,
            User.groups,
            User.attributes,
            User.email,
            User.token_generation,
            User.updated_at,
            turn,
        )
        .where(
            or_(User.id.in_(setting), User.id.in_(_live_tokens(now))),
            User.identity_source_id.in_(list(source_ids)),
            User.disabled.is_(False),
        )
        .subquery()
    )
    rows = session.execute(
        select(ranked)
        .where(ranked.c.turn <= limit)
        .order_by(ranked.c.turn, ranked.c.updated_at, ranked.c.id)
        .limit(limit)
    ).all()
    return [
        UserRecord(
            id=row.id,
            tenant_id=row.tenant_id,
            identity_source_id=row.identity_source_id,
            username=row.username,
            display_name=row.display_name,
            password_hash=None,
            role=row.role,
            groups=list(row.groups or []),
            attributes=dict(row.attributes or {}),
            disabled=False,
            config_version=0,
            queued=0,
            email=row.email or "",
            token_generation=int(row.token_generation or 0),
        )
        for row in rows
    ]


def _live_tokens(now: datetime) -> Any:
    return select(ApiToken.user_id).where(ApiToken.revoked_at.is_(None), ApiToken.expires_at > now)


def revoke_tokens(session: Session, user_id: str, now: datetime) -> list[tuple[str, str, str]]:
    """Revoke ``user_id``'s live API tokens; each one revoked (id, name, tenant id)."""
    rows = session.execute(
        update(ApiToken)
        .where(
            ApiToken.user_id == user_id,
            ApiToken.revoked_at.is_(None),
            ApiToken.expires_at > now,
        )
        .values(revoked_at=now)
        .returning(ApiToken.id, ApiToken.name, ApiToken.tenant_id)
    ).all()
    return [(str(i), str(n), str(t)) for i, n, t in rows]


def hold_setter(session: Session, user: UserRecord) -> bool:
    """Whether ``user``'s row is still there under the same source and name, locked until
    the unit ends (on PostgreSQL; SQLite's write unit holds the database): a delete or a
    rename meanwhile waits, instead of the refresh's upsert making the user anew."""
    found = session.execute(
        select(User.id)
        .where(
            User.id == user.id,
            User.identity_source_id == user.identity_source_id,
            User.username == user.username,
        )
        .with_for_update()
    ).first()
    return found is not None

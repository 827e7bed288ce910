"""Which broker user an OpenID provider's account is: the binding of issuer + ``sub``.

A provider's ``sub`` never changes and is never given to another person, while a
``preferred_username`` or an e-mail address may be renamed, recycled or (at some
providers) chosen by the user. So a user row of an OpenID Connect source remembers the
issuer and subject that first signed in as it, and every later sign-in is matched by
them; a name alone never reaches another person's row.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from deskbroker.store.tables import User, new_id, utcnow


@dataclass(frozen=True)
class Binding:
    """The broker user an account at the provider signs in as; ``taken`` when the name
    the provider gave belongs to a user bound to another account (nothing was written)."""

    username: str
    taken: bool = False


def bind(
    session: Session,
    *,
    tenant_id: str,
    identity_source_id: str,
    issuer: str,
    subject: str,
    username: str,
) -> Binding:
    """The user bound to (issuer, subject), binding one on the first sign-in.

    A bound user keeps the name it had (a rename at the provider renames nobody here).
    On a first sign-in the user named ``username`` is created bound, or, when an
    administrator created it beforehand and nobody is bound to it yet, bound now. One
    statement on every later sign-in; at most four on a first."""
    bound = session.scalars(
        select(User.username).where(
            User.identity_source_id == identity_source_id,
            User.oidc_issuer == issuer,
            User.oidc_subject == subject,
        )
    ).first()
    if bound is not None:
        return Binding(bound)
    now = utcnow()
    dialect = session.get_bind().dialect.name
    # A concurrent first sign-in of the same name (or subject) makes this a no-op; the
    # check below then tells which account won.
    session.execute(
        (pg_insert if dialect == "postgresql" else sqlite_insert)(User)
        .values(
            id=new_id(),
            tenant_id=tenant_id,
            identity_source_id=identity_source_id,
            username=username,
            oidc_issuer=issuer,
            oidc_subject=subject,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing()
    )
    session.execute(
        update(User)
        .where(
            User.identity_source_id == identity_source_id,
            User.username == username,
            User.oidc_subject.is_(None),
        )
        .values(oidc_issuer=issuer, oidc_subject=subject, updated_at=now)
    )
    owner = session.execute(
        select(User.oidc_issuer, User.oidc_subject).where(
            User.identity_source_id == identity_source_id, User.username == username
        )
    ).first()
    return Binding(username, taken=owner is None or tuple(owner) != (issuer, subject))

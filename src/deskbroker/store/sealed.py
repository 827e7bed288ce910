"""Every column the broker stores sealed with its secret box, for a key rotation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import select

from deskbroker.store.db import Unit
from deskbroker.store.tables import Center, IdentitySource, OidcFlow, User, Webhook

# (table, column) of every value sealed with the SecretBox.
SEALED: tuple[tuple[Any, str], ...] = (
    (Center, "secrets_sealed"),
    (IdentitySource, "secrets_sealed"),
    (User, "totp_sealed"),
    (OidcFlow, "sealed"),
    (Webhook, "secret_sealed"),
)


def sealed_rows(session: Unit) -> Iterator[tuple[Any, str]]:
    """Each row holding a sealed value, with the name of its sealed column; setting the
    attribute on the row writes it back when the unit commits."""
    for model, column in SEALED:
        attribute = getattr(model, column)
        # A redeemed OIDC hand-off keeps an empty ``sealed``: nothing to move.
        found = select(model).where(attribute.is_not(None), attribute != "")
        for row in session.scalars(found):
            yield row, column

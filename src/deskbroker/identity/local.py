"""Local users: stored in the broker's database with argon2id hashes."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from deskbroker.domain.accounts import UserRecord
from deskbroker.domain.rules import Identity
from deskbroker.identity.base import Credentials, IdentitySourceDriver


class LocalParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocalIdentitySource(IdentitySourceDriver):
    """Checks the password against the user's stored hash."""

    kind: ClassVar[str] = "local"
    # The password hash is the broker's own: checking it reaches nothing.
    offline: ClassVar[frozenset[str]] = frozenset({"authenticate", "lookup"})
    Params: ClassVar[type[BaseModel]] = LocalParams

    def authenticate(self, credentials: Credentials, known: UserRecord | None) -> Identity | None:
        # Verify even for unknown users so timing does not reveal who exists.
        ok = self.hashing.verify(known.password_hash if known else None, credentials.password)
        if not ok or known is None:
            return None
        return self.lookup(known.username, known)

"""The broker's record of a user account, as the login path and identity sources see it.

A plain value: the store builds it from the users table, identity sources read it
(a local source checks its password hash) without knowing where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class UserRecord:
    """The broker's row for a user, with what the login path needs beside it."""

    id: str
    tenant_id: str
    identity_source_id: str
    username: str
    display_name: str
    password_hash: str | None
    role: str
    groups: list[str]
    attributes: dict[str, Any]
    disabled: bool
    config_version: int
    queued: int
    email: str = ""
    # Whether the user confirmed a TOTP authenticator (their second factor).
    totp_enrolled: bool = False
    # Named in the user's tokens: a token of an older generation is revoked.
    token_generation: int = 0
    # Created by this very sign-in (not yet committed): it holds no desktop and waits in
    # no queue, so the login need not read them.
    created_now: bool = False

"""The login challenge: what a password login that owes a second factor answers.

A short-lived token signed for this purpose alone (its own key and audience, so no
endpoint takes it for a bearer token), bound to the user and the source, backed by a
row that its one success consumes. The login path issues it (``issue_challenge``);
``second_factor`` verifies it and completes the login. Its own module so that the login
path and the second factor each import it, and not each other.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt

from deskbroker.domain.accounts import UserRecord
from deskbroker.domain.second_factor import SecondFactorStep
from deskbroker.errors import Unauthorized
from deskbroker.services.config_cache import SourceView
from deskbroker.services.context import BrokerContext
from deskbroker.store import totp as store
from deskbroker.store.db import Unit as Session

CHALLENGE_AUDIENCE = "deskbroker:second-factor"

EXPIRED = "This login waited too long for its one-time code; log in again with your password."
FORGED = "This login challenge is not valid; log in again with your password."


@dataclass(frozen=True)
class Challenge:
    """A password login that waits for its second factor: no token, no desktops yet."""

    token: str
    expires_at: int
    step: SecondFactorStep
    user_id: str
    username: str
    tenant_id: str


@dataclass(frozen=True)
class ChallengeClaims:
    challenge_id: str
    user_id: str
    username: str
    tenant_id: str
    source_id: str
    step: SecondFactorStep


class ChallengeSigner:
    """Signs and checks challenges with a key of their own, derived from the broker's."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(("second-factor:" + secret).encode()).digest()

    def issue(
        self,
        *,
        user_id: str,
        username: str,
        tenant_id: str,
        source_id: str,
        step: SecondFactorStep,
        ttl_s: int,
    ) -> tuple[str, int, str]:
        """(challenge, expiry, challenge id)."""
        now = int(time.time())
        challenge_id = uuid.uuid4().hex
        payload = {
            "sub": user_id,
            "name": username,
            "tid": tenant_id,
            "src": source_id,
            "step": step.value,
            "jti": challenge_id,
            "iat": now,
            "exp": now + ttl_s,
            "aud": CHALLENGE_AUDIENCE,
        }
        return jwt.encode(payload, self._key, algorithm="HS256"), now + ttl_s, challenge_id

    def verify(self, token: str) -> ChallengeClaims:
        try:
            data: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=CHALLENGE_AUDIENCE,
                options={"require": ["exp", "sub", "tid", "src", "jti", "step"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized(EXPIRED) from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(FORGED) from exc
        try:
            step = SecondFactorStep(data["step"])
        except ValueError as exc:
            raise Unauthorized(FORGED) from exc
        return ChallengeClaims(
            challenge_id=str(data["jti"]),
            user_id=str(data["sub"]),
            username=str(data.get("name", "")),
            tenant_id=str(data["tid"]),
            source_id=str(data["src"]),
            step=step,
        )


def signer(ctx: BrokerContext) -> ChallengeSigner:
    return ChallengeSigner(ctx.settings.effective_secret_key)


def issue_challenge(
    ctx: BrokerContext,
    session: Session,
    source: SourceView,
    record: UserRecord,
    ou: str,
    step: SecondFactorStep,
) -> Challenge:
    """In the password login's transaction: the challenge that stands in for its token."""
    token, expires, challenge_id = signer(ctx).issue(
        user_id=record.id,
        username=record.username,
        tenant_id=record.tenant_id,
        source_id=source.id,
        step=step,
        ttl_s=ctx.settings.second_factor_challenge_ttl_s,
    )
    store.add_challenge(
        session,
        challenge_id=challenge_id,
        tenant_id=record.tenant_id,
        user_id=record.id,
        ou=ou,
        expires_at=datetime.fromtimestamp(expires, UTC),
    )
    return Challenge(token, expires, step, record.id, record.username, record.tenant_id)

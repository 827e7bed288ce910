"""Password hashing (argon2id), signed short-lived tokens (JWT HS256) and secrets at rest."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from deskbroker.errors import Unauthorized

TOKEN_AUDIENCE = "deskbroker"
# The role an API token names; the request acts with its user's role, within its scopes.
API_TOKEN_ROLE = "api-token"
# The role of a desktop agent's token; no person ever holds it.
AGENT_ROLE = "agent"


class PasswordHashing:
    """argon2id with an operator-chosen cost; verification never raises on bad hashes."""

    def __init__(self, time_cost: int, memory_kib: int, parallelism: int) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism
        )
        # A fixed hash to verify against when the user does not exist, so a missing
        # user costs the same time as a wrong password.
        self._decoy = self._hasher.hash(uuid.uuid4().hex)

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored or self._decoy, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False


@dataclass(frozen=True)
class TokenClaims:
    """What a verified bearer token says about its holder."""

    user_id: str
    tenant_id: str
    role: str
    username: str
    expires_at: int
    token_id: str
    policy_id: str | None = None
    # Set only on an agent token: the one desktop whose events it may report.
    desktop_id: str | None = None
    # Set only on an API token: the grants it is limited to, within its user's role.
    scopes: tuple[str, ...] | None = None
    # A user token's generation: the user row's must still match (revocation).
    generation: int = 0

    @property
    def is_api_token(self) -> bool:
        return self.role == API_TOKEN_ROLE

    @property
    def is_agent(self) -> bool:
        return self.role == AGENT_ROLE


# How an engine-built desktop's enrolment secret begins (a tenant key never does).
ENROLMENT_PREFIX = "dbe1."
# ... and one an administrator minted for a machine the broker did not build.
ADMIN_ENROLMENT_PREFIX = "dba1."


def _token_key(secret: str) -> bytes:
    return hashlib.sha256(("token:" + secret).encode()).digest()


class TokenSigner:
    """Issues and verifies HS256 tokens; brokers of one cluster share the key.

    During a key rotation the ``previous`` keys still verify tokens they signed; every
    new token is signed with the current key."""

    def __init__(self, secret: str, ttl_s: int, previous: Sequence[str] = ()) -> None:
        self._key = _token_key(secret)
        self._previous = tuple(_token_key(key) for key in previous)
        self.ttl_s = ttl_s

    def _decode(self, token: str) -> dict[str, Any]:
        for key in (self._key, *self._previous):
            try:
                data: dict[str, Any] = jwt.decode(
                    token,
                    key,
                    algorithms=["HS256"],
                    audience=TOKEN_AUDIENCE,
                    options={"require": ["exp", "sub", "tid", "role"]},
                )
            except jwt.InvalidSignatureError:
                continue  # perhaps signed before the rotation: try the previous key
            return data
        raise jwt.InvalidSignatureError("signed with none of the broker's keys")

    def issue(
        self,
        *,
        user_id: str,
        tenant_id: str,
        role: str,
        username: str,
        policy_id: str | None = None,
        generation: int = 0,
    ) -> tuple[str, int]:
        now = int(time.time())
        exp = now + self.ttl_s
        payload = {
            "sub": user_id,
            "tid": tenant_id,
            "role": role,
            "name": username,
            "iat": now,
            "exp": exp,
            "aud": TOKEN_AUDIENCE,
            "jti": uuid.uuid4().hex,
            "pid": policy_id,
            "gen": generation,
        }
        return jwt.encode(payload, self._key, algorithm="HS256"), exp

    def issue_agent(
        self, *, desktop_id: str, tenant_id: str, desktop_name: str, ttl_s: int
    ) -> tuple[str, int, str]:
        """A long-lived token for one desktop's agent: (token, expiry, token id).

        The token id is stored on the desktop, so minting a new token revokes the old.
        """
        now = int(time.time())
        exp = now + ttl_s
        token_id = uuid.uuid4().hex
        payload = {
            "sub": desktop_id,
            "tid": tenant_id,
            "role": AGENT_ROLE,
            "name": f"agent@{desktop_name}",
            "did": desktop_id,
            "iat": now,
            "exp": exp,
            "aud": TOKEN_AUDIENCE,
            "jti": token_id,
        }
        return jwt.encode(payload, self._key, algorithm="HS256"), exp, token_id

    def issue_api(
        self, *, token_id: str, user_id: str, tenant_id: str, username: str, expires_at: int
    ) -> str:
        """An API token for automation. It names only its row (``jti``): the broker looks
        the row up on every use, so revocation, the user's current role and the token's
        scopes apply at once."""
        payload = {
            "sub": user_id,
            "tid": tenant_id,
            "role": API_TOKEN_ROLE,
            "name": username,
            "iat": int(time.time()),
            "exp": expires_at,
            "aud": TOKEN_AUDIENCE,
            "jti": token_id,
        }
        return jwt.encode(payload, self._key, algorithm="HS256")

    def enrolment_secret(
        self, *, desktop_id: str, tenant_id: str, expires_at: int, by_admin: bool = False
    ) -> str:
        """A short-lived enrolment secret for one desktop: the engine's for a desktop it
        builds, or an administrator's for a machine it did not (``by_admin``).

        Stateless (an HMAC of the kind, the desktop, its tenant and the expiry), so the
        engine can put it into the build request without a database write; single use is
        enforced by the desktop's ``agent_enrolled_at`` when the agent presents it."""
        prefix = ADMIN_ENROLMENT_PREFIX if by_admin else ENROLMENT_PREFIX
        mac = self._enrolment_mac(self._key, prefix, desktop_id, tenant_id, expires_at)
        return f"{prefix}{desktop_id}.{expires_at}.{mac}"

    @staticmethod
    def _enrolment_mac(
        key: bytes, prefix: str, desktop_id: str, tenant_id: str, expires_at: int
    ) -> str:
        message = f"enrol|{prefix}|{desktop_id}|{tenant_id}|{expires_at}".encode()
        digest = hmac.new(key, message, "sha256")
        return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")

    @staticmethod
    def read_enrolment(secret: str) -> tuple[str, int, bool] | None:
        """(desktop id, expiry, minted by an administrator) an enrolment secret names,
        None when it is not one."""
        for prefix in (ENROLMENT_PREFIX, ADMIN_ENROLMENT_PREFIX):
            if secret.startswith(prefix):
                parts = secret[len(prefix) :].split(".")
                if len(parts) != 3 or not parts[1].isdigit() or len(parts[1]) > 12:
                    return None
                return parts[0], int(parts[1]), prefix == ADMIN_ENROLMENT_PREFIX
        return None

    def enrolment_valid(self, secret: str, tenant_id: str) -> bool:
        """The secret was signed by this cluster for a desktop of ``tenant_id``."""
        named = self.read_enrolment(secret)
        if named is None:
            return False
        prefix = ADMIN_ENROLMENT_PREFIX if named[2] else ENROLMENT_PREFIX
        given = secret.rsplit(".", 1)[1]
        return any(
            hmac.compare_digest(
                given, self._enrolment_mac(key, prefix, named[0], tenant_id, named[1])
            )
            for key in (self._key, *self._previous)
        )

    def verify(self, token: str) -> TokenClaims:
        try:
            data = self._decode(token)
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("Your session token has expired; log in again.") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(
                "The bearer token is malformed or not signed by this broker."
            ) from exc
        return TokenClaims(
            user_id=str(data["sub"]),
            tenant_id=str(data["tid"]),
            role=str(data["role"]),
            username=str(data.get("name", "")),
            expires_at=int(data["exp"]),
            token_id=str(data.get("jti", "")),
            policy_id=data.get("pid"),
            desktop_id=data.get("did") if data["role"] == AGENT_ROLE else None,
            generation=int(data.get("gen") or 0),
        )


def _fernet(secret: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(("secrets:" + secret).encode()).digest()))


class SecretBox:
    """Encrypts secrets (center passwords, keys) before they reach the database.

    Secrets sealed under a ``previous`` key still open during a key rotation; everything
    is sealed with the current key, and ``reseal`` moves an old secret to it."""

    def __init__(self, secret: str, previous: Sequence[str] = ()) -> None:
        self._fernet = MultiFernet([_fernet(secret), *(_fernet(key) for key in previous)])

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("secret cannot be decrypted with this broker's key") from exc

    def reseal(self, sealed: str) -> str:
        """``sealed`` sealed again under the current key."""
        try:
            return self._fernet.rotate(sealed.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("secret cannot be decrypted with this broker's key") from exc

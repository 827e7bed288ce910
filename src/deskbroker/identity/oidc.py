"""OpenID Connect: the broker as a relying party of a provider (Keycloak, Entra ID, ...).

Users do not give the broker a password: they sign in at the provider, by the
authorization code flow with PKCE (the portal) or the device flow (the CLI), and the
broker verifies the ID token the provider hands back. This module talks to the provider
(discovery, keys, token and device endpoints, userinfo) with httpx and verifies ID tokens
with PyJWT; the flows' state lives in ``services/oidc_signin.py``.

The client secret is not a parameter: it is the source's secret ``client_secret``,
sealed at rest. Without one the broker is a public client and PKCE alone protects the code.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar
from urllib.parse import urlencode, urlsplit

import httpx
import jwt
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from deskbroker.domain.accounts import UserRecord
from deskbroker.domain.rules import Identity
from deskbroker.errors import (
    BadRequest,
    Forbidden,
    IdentityProviderError,
    IdentityProviderUnavailable,
    Unauthorized,
)
from deskbroker.identity.base import (
    Credentials,
    IdentitySourceDriver,
    SourceCapability,
    password_refusal,
)
from deskbroker.identity.sign_in import (
    DeviceGrant,
    DevicePending,
    ProviderSignIn,
    ProviderUser,
    TokenSet,
)
from deskbroker.outbound import OutboundRefused, Target
from deskbroker.outbound_http import guarded_transport
from deskbroker.security import PasswordHashing

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# Only asymmetric signatures: an HS256 ID token would be signed with the client secret,
# which every broker node and the provider share, and "none" is no signature at all.
SIGNING_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
METADATA_TTL_S = 3600.0
_ERROR_CODE = re.compile(r"^[a-z0-9_.-]{1,64}$")
log = logging.getLogger(__name__)
# A token signed with a key the broker has not seen may mean the provider rotated its
# keys; the key set is fetched again, but not more often than this.
KEY_REFRESH_MIN_S = 10.0


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL such as https://login.example.org")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r}: an issuer or redirect URI has no query or fragment")
    return value


HttpUrl = Annotated[str, StringConstraints(max_length=1000), AfterValidator(_http_url)]
Claim = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[\w.:-]+$")]
Scope = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[\x21-\x7e]+$")]


def _with_openid(scopes: list[str]) -> list[str]:
    return scopes if "openid" in scopes else ["openid", *scopes]


class OidcParams(BaseModel):
    """An OpenID provider and how its claims become a broker user."""

    model_config = ConfigDict(extra="forbid")
    # A CA file is read from the broker host's disk: only a global admin may name one.
    host_side_params: ClassVar[frozenset[str]] = frozenset({"ca_file"})

    issuer: HttpUrl = Field(description="as the provider names itself; discovery is under it")
    client_id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    scopes: Annotated[list[Scope], AfterValidator(_with_openid)] = Field(
        default_factory=lambda: ["openid", "profile", "email"], max_length=20
    )
    username_claim: Claim = Field(
        default="preferred_username",
        description="names a user's broker account at their first sign-in (later sign-ins "
        "are matched by the provider's issuer and sub)",
    )
    groups_claim: Claim | None = Field(default="groups", description="a list of group names")
    display_name_claim: Claim = "name"
    email_claim: Claim = "email"
    trust_verified_email: bool = Field(
        default=False,
        validate_default=True,
        description="let an e-mail address name a user (username_claim email, or when the "
        "username claim is missing), and only when the provider says email_verified",
    )
    attribute_claims: list[Claim] = Field(
        default_factory=list, max_length=50, description="copied for assignment rules"
    )
    redirect_uri: HttpUrl | None = Field(
        default=None,
        description="the broker's callback as registered at the provider "
        "(https://broker.example.org/api/v1/auth/oidc/callback); default: from the request",
    )
    use_userinfo: bool = Field(
        default=True, description="also read the claims from the userinfo endpoint"
    )
    clock_skew_s: int = Field(default=60, ge=0, le=600, description="leeway on exp and iat")
    sign_in_ttl_s: int = Field(
        default=600, ge=60, le=3600, description="how long a started sign-in stays valid"
    )
    timeout_s: float = Field(default=10.0, gt=0, le=60)
    verify_tls: bool = True
    ca_file: Annotated[str, StringConstraints(max_length=1000)] | None = Field(
        default=None, description="a CA bundle on the broker host (global admins only)"
    )

    def outbound_targets(self) -> list[Target]:
        """The issuer; the endpoints its discovery names are checked as they are reached."""
        return [Target.url("issuer", self.issuer)]

    @field_validator("trust_verified_email")
    @classmethod
    def _email_needs_trust(cls, trusted: bool, info: ValidationInfo) -> bool:
        claim = info.data.get("username_claim")
        if claim in (info.data.get("email_claim"), "email") and not trusted:
            raise PydanticCustomError(
                "email_username",
                "username_claim '{claim}' names users by e-mail address, which the broker "
                "does only when the operator allows it: set trust_verified_email to true as "
                "well (users whose address the provider has not verified are then refused)",
                {"claim": claim},
            )
        return trusted


class OidcIdentitySource(IdentitySourceDriver, ProviderSignIn):
    """A relying party of one OpenID provider; users are created from verified claims."""

    kind: ClassVar[str] = "oidc"
    Params: ClassVar[type[BaseModel]] = OidcParams
    provisions_users: ClassVar[bool] = True
    # Users sign in at the provider, never with a password given to the broker.
    capabilities: ClassVar[frozenset[SourceCapability]] = frozenset(
        {SourceCapability.BROWSER_SIGN_IN, SourceCapability.DEVICE_SIGN_IN}
    )

    def __init__(
        self, params: Mapping[str, Any], secrets: Mapping[str, str], hashing: PasswordHashing
    ) -> None:
        super().__init__(params, secrets, hashing)
        self.config: OidcParams = self.params  # type: ignore[assignment]
        self.client_secret = self.secrets.get("client_secret") or None
        self._http = httpx.Client(
            timeout=self.config.timeout_s,
            # Every connection (the issuer, and any endpoint its discovery names) is
            # checked against the broker's outbound policy.
            transport=guarded_transport(verify=self.config.ca_file or self.config.verify_tls),
            follow_redirects=False,
            headers={"Accept": "application/json"},
        )
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: dict[str, jwt.PyJWK] = {}
        self._keys_at = 0.0

    # --- the identity seam ---------------------------------------------------------
    def authenticate(self, credentials: Credentials, known: UserRecord | None) -> Identity | None:
        raise BadRequest(password_refusal("this source"))

    def close(self) -> None:
        self._http.close()

    # --- ProviderSignIn -----------------------------------------------------------
    @property
    def issuer(self) -> str:
        return self.config.issuer

    @property
    def redirect_uri(self) -> str | None:
        return self.config.redirect_uri

    @property
    def sign_in_ttl_s(self) -> int:
        return self.config.sign_in_ttl_s

    # --- talking to the provider ---------------------------------------------------
    def _request(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except OutboundRefused as exc:
            raise IdentityProviderError(
                f"the identity provider's {what} endpoint is not reachable from the broker: "
                f"{exc.detail}"
            ) from exc
        except httpx.HTTPError as exc:
            raise IdentityProviderUnavailable(
                f"the identity provider at {self.config.issuer} did not answer the {what} "
                f"request ({type(exc).__name__}); try again later or ask your administrator"
            ) from exc
        if response.status_code >= 500:
            raise IdentityProviderUnavailable(
                f"the identity provider at {self.config.issuer} failed the {what} request "
                f"(HTTP {response.status_code}); try again later"
            )
        return response

    def _json(self, response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise IdentityProviderError(
                f"the identity provider's {what} answer (HTTP {response.status_code}) is not "
                "a JSON object"
            )
        return data

    def metadata(self) -> dict[str, Any]:
        """The discovery document, fetched once an hour."""
        with self._lock:
            if self._metadata is not None and time.monotonic() - self._metadata_at < METADATA_TTL_S:
                return self._metadata
        url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        response = self._request("GET", url, "discovery")
        if response.status_code != 200:
            raise IdentityProviderError(
                f"{url} answered HTTP {response.status_code}: is {self.config.issuer} the "
                "provider's issuer URL?"
            )
        data = self._json(response, "discovery")
        # OpenID Connect Discovery §4.3: the document must name the issuer it was asked for.
        if data.get("issuer") != self.config.issuer:
            raise IdentityProviderError(
                f"the discovery document at {url} names another issuer than "
                f"{self.config.issuer!r}; set the issuer parameter to the provider's own"
            )
        for needed in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(data.get(needed), str):
                raise IdentityProviderError(f"the provider's discovery document has no {needed}")
        with self._lock:
            self._metadata, self._metadata_at = data, time.monotonic()
        return data

    def _endpoint(self, name: str, what: str) -> str:
        url = self.metadata().get(name)
        if not isinstance(url, str):
            raise IdentityProviderError(
                f"the identity provider at {self.config.issuer} offers no {what} "
                f"(no {name} in its discovery document)"
            )
        return url

    def _client_auth(self, form: dict[str, str]) -> httpx.BasicAuth | None:
        if self.client_secret is None:
            form["client_id"] = self.config.client_id
            return None
        return httpx.BasicAuth(self.config.client_id, self.client_secret)

    def _token_request(self, form: dict[str, str], what: str) -> dict[str, Any]:
        auth = self._client_auth(form)
        url = self._endpoint("token_endpoint", "token endpoint")
        response = self._request("POST", url, what, data=form, auth=auth)
        data = self._json(response, what)
        if response.status_code == 200:
            return data
        error = _error_code(data, response.status_code)
        said = error  # the provider's free text (error_description) is logged, never shown
        if data.get("error_description"):
            described = _text(data["error_description"])[:300]
            log.info("identity provider %s: %s", self.config.issuer, described)
        if error in ("invalid_client", "unauthorized_client"):
            raise IdentityProviderError(
                f"the identity provider refused the broker's client {self.config.client_id!r} "
                f"({said}); check the source's client_id and client_secret"
            )
        return {"error": error, "said": said}

    def authorization_url(
        self, *, state: str, nonce: str, code_challenge: str, redirect_uri: str
    ) -> str:
        query = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.config.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        base = self._endpoint("authorization_endpoint", "authorization endpoint")
        return f"{base}{'&' if '?' in base else '?'}{urlencode(query)}"

    def exchange_code(self, *, code: str, code_verifier: str, redirect_uri: str) -> TokenSet:
        answer = self._token_request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": code_verifier,
                "redirect_uri": redirect_uri,
            },
            "token",
        )
        if "error" in answer:
            raise BadRequest(
                f"the identity provider did not accept the sign-in's code ({answer['said']}): "
                "it was used already, has expired, or belongs to another sign-in; start again"
            )
        return self._tokens(answer)

    def _tokens(self, answer: dict[str, Any]) -> TokenSet:
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise IdentityProviderError(
                "the identity provider answered without an ID token: is the openid scope "
                "allowed for this client?"
            )
        access = answer.get("access_token")
        return TokenSet(id_token, access if isinstance(access, str) else None)

    def start_device(self) -> DeviceGrant:
        form = {"scope": " ".join(self.config.scopes)}
        auth = self._client_auth(form)
        if auth is not None:
            form["client_id"] = self.config.client_id
        url = self._endpoint("device_authorization_endpoint", "device sign-in")
        response = self._request("POST", url, "device authorization", data=form, auth=auth)
        data = self._json(response, "device authorization")
        if response.status_code != 200:
            said = _error_code(data, response.status_code)
            raise IdentityProviderError(
                f"the identity provider refused a device sign-in for client "
                f"{self.config.client_id!r} ({said}); is the device_code grant allowed for it?"
            )
        try:
            return DeviceGrant(
                device_code=str(data["device_code"]),
                user_code=str(data["user_code"]),
                verification_uri=str(data["verification_uri"]),
                verification_uri_complete=(
                    str(data["verification_uri_complete"])
                    if data.get("verification_uri_complete")
                    else None
                ),
                expires_in=int(data["expires_in"]),
                interval=max(1, int(data.get("interval", 5))),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IdentityProviderError(
                "the identity provider's device authorization answer lacks or garbles one of "
                "device_code, user_code, verification_uri, expires_in and interval"
            ) from exc

    def poll_device(self, device_code: str) -> TokenSet | DevicePending:
        answer = self._token_request(
            {"grant_type": DEVICE_GRANT, "device_code": device_code}, "device token"
        )
        error = answer.get("error")
        if error is None:
            return self._tokens(answer)
        if error in ("authorization_pending", "slow_down"):
            return DevicePending(slow_down=error == "slow_down")
        if error == "access_denied":
            raise Forbidden("the sign-in was declined at the identity provider")
        if error == "expired_token":
            raise BadRequest("the device sign-in expired before it was approved; start again")
        raise BadRequest(f"the identity provider ended the device sign-in ({answer['said']})")

    def userinfo(self, access_token: str) -> dict[str, Any]:
        url = self._endpoint("userinfo_endpoint", "userinfo endpoint")
        response = self._request(
            "GET", url, "userinfo", headers={"Authorization": f"Bearer {access_token}"}
        )
        if response.status_code != 200:
            raise IdentityProviderError(
                f"the identity provider's userinfo endpoint answered HTTP "
                f"{response.status_code}; set use_userinfo to false if it has none"
            )
        return self._json(response, "userinfo")

    # --- verifying ------------------------------------------------------------------
    def _signing_key(self, header: dict[str, Any]) -> jwt.PyJWK:
        kid = header.get("kid")
        with self._lock:
            keys, fetched_at = self._keys, self._keys_at
        stale = time.monotonic() - fetched_at > METADATA_TTL_S
        if stale or (kid not in keys and time.monotonic() - fetched_at > KEY_REFRESH_MIN_S):
            keys = self._fetch_keys()
        if kid is None and len(keys) == 1:
            return next(iter(keys.values()))
        key = keys.get(str(kid))
        if key is None:
            raise Unauthorized(
                f"the ID token is signed with a key (kid {kid!r}) the identity provider does "
                "not publish; it was not issued by this provider"
            )
        return key

    def _fetch_keys(self) -> dict[str, jwt.PyJWK]:
        url = self._endpoint("jwks_uri", "signing keys")
        response = self._request("GET", url, "signing keys")
        data = self._json(response, "signing keys")
        keys: dict[str, jwt.PyJWK] = {}
        for entry in data.get("keys", []) if isinstance(data.get("keys"), list) else []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # a key type this broker cannot use; the others still serve
            keys[str(entry.get("kid", len(keys)))] = key
        if not keys:
            raise IdentityProviderError(f"the identity provider publishes no signing key at {url}")
        with self._lock:
            self._keys, self._keys_at = keys, time.monotonic()
        return keys

    def verify_id_token(self, raw: str, nonce: str | None) -> dict[str, Any]:
        """The ID token's claims once its signature, issuer, audience, times and nonce hold."""
        try:
            header = jwt.get_unverified_header(raw)
        except jwt.PyJWTError as exc:
            raise Unauthorized("the identity provider's ID token is not a signed JWT") from exc
        allowed = SIGNING_ALGORITHMS & set(
            self.metadata().get("id_token_signing_alg_values_supported") or ["RS256"]
        )
        algorithm = header.get("alg")
        if algorithm not in allowed:
            raise Unauthorized(
                f"the ID token is signed with {algorithm!r}; the broker accepts "
                f"{', '.join(sorted(allowed)) or 'no algorithm this provider offers'}"
            )
        key = self._signing_key(header)
        try:
            claims: dict[str, Any] = jwt.decode(
                raw,
                key.key,
                algorithms=[str(algorithm)],
                audience=self.config.client_id,
                issuer=self.config.issuer,
                leeway=self.config.clock_skew_s,
                options={"require": ["iss", "aud", "exp", "iat", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("the ID token has expired; sign in again") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthorized(
                f"the ID token was issued to another client, not to this broker "
                f"({self.config.client_id!r})"
            ) from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthorized(
                f"the ID token was issued by another provider, not {self.config.issuer}"
            ) from exc
        except (jwt.ImmatureSignatureError, jwt.InvalidIssuedAtError) as exc:
            raise Unauthorized(
                "the ID token is dated in the future: the clocks of the broker and the "
                "identity provider disagree"
            ) from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthorized("the ID token's signature does not verify") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"the ID token lacks the {exc.claim!r} claim") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the ID token is not valid: {exc}") from exc
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.config.client_id:
            raise Unauthorized("the ID token names several audiences but not this broker as azp")
        if nonce is not None and not hmac.compare_digest(
            str(claims.get("nonce", "")).encode(), nonce.encode()
        ):
            raise Unauthorized(
                "the ID token's nonce does not match this sign-in: it belongs to another "
                "sign-in or was replayed; start again"
            )
        return claims

    def sign_in(self, tokens: TokenSet, nonce: str | None) -> ProviderUser:
        """Verify the ID token, add the userinfo claims, and describe the user."""
        claims = self.verify_id_token(tokens.id_token, nonce)
        if (
            self.config.use_userinfo
            and tokens.access_token
            and self.metadata().get("userinfo_endpoint")
        ):
            extra = self.userinfo(tokens.access_token)
            # OpenID Connect Core §5.3.2: userinfo about someone else is not to be used.
            if extra.get("sub") != claims["sub"]:
                raise Unauthorized(
                    "the provider's userinfo describes another user than the ID token"
                )
            claims = {**extra, **claims}
        subject = str(claims["sub"])
        if not 0 < len(subject) <= 255:
            # OpenID Connect Core §2: at most 255 ASCII characters, never empty.
            raise Unauthorized("the ID token's sub is empty or longer than 255 characters")
        return ProviderUser(self.identity(claims), str(claims["iss"]), subject)

    def _username(self, claims: Mapping[str, Any]) -> str:
        """The name a first sign-in gives the broker user. An e-mail address only when the
        operator allowed it and the provider verified it: anyone can type an address."""
        config = self.config
        by_email = config.username_claim in (config.email_claim, "email")
        name = claims.get(config.username_claim)
        if not by_email and isinstance(name, str) and name.strip():
            return name.strip()
        if by_email or config.trust_verified_email:
            email = claims.get(config.username_claim if by_email else config.email_claim)
            if isinstance(email, str) and email.strip():
                if _verified(claims):
                    return email.strip()
                raise Forbidden(
                    "the identity provider has not verified this user's e-mail address "
                    "(no email_verified true), and the broker names users by an address "
                    "only when it is verified",
                    reason="email_unverified",
                )
        raise Forbidden(
            f"the identity provider gave no {config.username_claim!r} claim for this user; "
            "the administrator can pick another username_claim or add the claim's scope"
        )

    def identity(self, claims: Mapping[str, Any]) -> Identity:
        username = self._username(claims)
        groups: list[str] = []
        raw_groups = claims.get(self.config.groups_claim) if self.config.groups_claim else None
        if isinstance(raw_groups, list):
            groups = [str(g) for g in raw_groups if isinstance(g, str | int)]
        elif isinstance(raw_groups, str):
            groups = [raw_groups]
        attributes = {
            name: _text(claims[name]) for name in self.config.attribute_claims if name in claims
        }
        attributes["sub"] = str(claims.get("sub", ""))
        return Identity(
            username=username[:200],
            groups=frozenset(groups),
            attributes=attributes,
            display_name=_text(claims.get(self.config.display_name_claim, ""))[:200],
            # An address the provider has not verified may be anyone's: not kept.
            email=_text(claims.get(self.config.email_claim, ""))[:320] if _verified(claims) else "",
        )


def _error_code(data: Mapping[str, Any], status: int) -> str:
    """The OAuth error code of an answer (RFC 6749 §5.2), when it looks like one: a
    remote's free text never reaches a message."""
    error = data.get("error")
    if isinstance(error, str) and _ERROR_CODE.match(error):
        return error
    return f"HTTP {status}"


def _verified(claims: Mapping[str, Any]) -> bool:
    # Some providers (Amazon Cognito) send the boolean as a string.
    return claims.get("email_verified") in (True, "true")


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)

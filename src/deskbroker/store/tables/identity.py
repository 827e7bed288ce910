"""Who signs in: identity sources, assignment rules, users, roles, API tokens, login
throttling, second-factor challenges and OpenID Connect flows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from deskbroker.store.tables.base import (
    Base,
    _created,
    _id,
    _tenant,
    _updated,
)


class IdentitySource(Base):
    __tablename__ = "identity_sources"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(40))
    domain: Mapped[str] = mapped_column(String(200), default="")
    position: Mapped[int] = mapped_column(Integer, default=0)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    secrets_sealed: Mapped[str | None] = mapped_column(Text, default=None)
    # off | optional (users who enrolled give a code) | required (everyone does).
    second_factor: Mapped[str] = mapped_column(String(20), default="off")
    # Last created or changed by a global administrator (or the operator's CLI): only
    # such a source is sent unknown names in a tenant that holds a global administrator
    # (services/source_choice.py), since a global admin's typo is one.
    set_by_global_admin: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class AssignmentRuleRow(Base):
    __tablename__ = "assignment_rules"
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    identity_source_id: Mapped[str] = mapped_column(
        ForeignKey("identity_sources.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer, default=0)
    name: Mapped[str] = mapped_column(String(100), default="")
    conditions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    policy_id: Mapped[str | None] = mapped_column(
        ForeignKey("policies.id", ondelete="RESTRICT"), default=None, index=True
    )
    role: Mapped[str] = mapped_column(String(40), default="user")
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("identity_source_id", "username"),
        # One broker user per account at an OpenID provider (NULLs are distinct: users
        # of other kinds of source have none).
        UniqueConstraint(
            "identity_source_id", "oidc_issuer", "oidc_subject", name="uq_users_oidc_subject"
        ),
        # Which sources hold a name, whatever its case: the login sends a password only
        # to the source that owns the account (services/source_choice.py).
        Index("ix_users_tenant_folded_name", "tenant_id", func.lower(text("username"))),
    )
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    identity_source_id: Mapped[str] = mapped_column(
        ForeignKey("identity_sources.id", ondelete="RESTRICT"), index=True
    )
    username: Mapped[str] = mapped_column(String(200))
    # The OpenID provider's account (issuer + ``sub``) this user was bound to at their
    # first sign-in: later sign-ins are matched by it, never by a name or an e-mail.
    oidc_issuer: Mapped[str | None] = mapped_column(String(1000), default=None)
    oidc_subject: Mapped[str | None] = mapped_column(String(255), default=None)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(320), default="")
    password_hash: Mapped[str | None] = mapped_column(String(255), default=None)
    role: Mapped[str] = mapped_column(String(40), default="user")
    groups: Mapped[list[Any]] = mapped_column(default=list)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # The TOTP secret, sealed; it counts as a second factor only once ``totp_enrolled_at``
    # says the user proved their authenticator app has it.
    totp_sealed: Mapped[str | None] = mapped_column(Text, default=None)
    totp_enrolled_at: Mapped[datetime | None] = mapped_column(default=None)
    # The last time step whose code was accepted: no code of it or before it passes again.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # Named in every user token this user holds; raising it (logout, disabled, demoted,
    # new password) makes all of them stop working at the next request.
    token_generation: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class CustomRole(Base):
    """A tenant's own role: a named set of ``resource:action`` grants."""

    __tablename__ = "custom_roles"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    name: Mapped[str] = mapped_column(String(40))
    description: Mapped[str] = mapped_column(String(500), default="")
    permissions: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class ApiToken(Base):
    """A token for automation: acts as the user who made it, within ``scopes``, until
    ``expires_at`` or revocation. Only its id is stored; the signed token is shown once."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    expires_at: Mapped[datetime] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = _created()


class LoginThrottle(Base):
    """Failed sign-ins counted per account or per client address (``key``), and until
    when that key is locked out. Shared by every broker of a cluster."""

    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_started_at: Mapped[datetime] = mapped_column()
    locked_until: Mapped[datetime | None] = mapped_column(default=None)
    lockouts: Mapped[int] = mapped_column(Integer, default=0)


class LoginChallenge(Base):
    """A password login waiting for its second factor; consumed by its one success."""

    __tablename__ = "login_challenges"
    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    # The user's OU as the directory said at the password step: rules match on it, and
    # the broker's user row does not keep it.
    ou: Mapped[str] = mapped_column(Text, default="")
    expires_at: Mapped[datetime] = mapped_column(index=True)
    created_at: Mapped[datetime] = _created()


class OidcFlow(Base):
    """An OpenID Connect sign-in under way: an authorization code flow between its start
    and the provider's callback, or a device flow the CLI polls. Kept in the database so
    any broker of a cluster can finish what another started.

    ``id`` is the SHA-256 of the ``state`` (or the CLI's device handle), so the table
    alone cannot finish anyone's sign-in; the PKCE verifier or device code is sealed.
    """

    __tablename__ = "oidc_flows"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))  # code | device | handoff
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    identity_source_id: Mapped[str] = mapped_column(
        ForeignKey("identity_sources.id", ondelete="CASCADE"), index=True
    )
    nonce: Mapped[str | None] = mapped_column(String(64), default=None)
    sealed: Mapped[str] = mapped_column(Text)
    redirect_uri: Mapped[str] = mapped_column(String(2000), default="")
    return_to: Mapped[str | None] = mapped_column(String(2000), default=None)
    # SHA-256 of the browser's binding cookie: the callback must come back to the
    # browser that started the sign-in (login CSRF).
    browser_binding: Mapped[str | None] = mapped_column(String(64), default=None)
    interval_s: Mapped[int] = mapped_column(Integer, default=5)
    next_poll_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None] = mapped_column(default=None)

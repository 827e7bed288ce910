"""Parameters of the LDAP and Active Directory identity sources (validated on write).

The service account's password is not a parameter: it is the source's secret
``bind_password``, sealed at rest by the admin API and never returned.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from deskbroker.outbound import Target

_ATTRIBUTE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|\d+(?:\.\d+)+)$")


def _server_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("ldap", "ldaps"):
        raise ValueError(f"{value!r} is not an ldap:// or ldaps:// URL")
    if not parts.hostname:
        raise ValueError(f"{value!r} names no host")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as exc:
        raise ValueError(f"{value!r} has a bad port") from exc
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{value!r}: give only scheme, host and port, as ldaps://dc1:636")
    return value


def _dn(value: str) -> str:
    try:
        parse_dn(value)
    except LDAPInvalidDnError as exc:
        raise ValueError(f"{value!r} is not a DN such as dc=example,dc=org") from exc
    return value


def _filter(value: str) -> str:
    depth = 0
    for char in value:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            break
    if not (value.startswith("(") and value.endswith(")")) or depth != 0:
        raise ValueError(f"{value!r} is not an LDAP filter such as (objectClass=person)")
    return value


def _attribute(value: str) -> str:
    if not _ATTRIBUTE.match(value):
        raise ValueError(f"{value!r} is not an attribute name such as mail")
    return value


ServerUrl = Annotated[str, StringConstraints(max_length=500), AfterValidator(_server_url)]
Dn = Annotated[str, StringConstraints(min_length=1, max_length=1000), AfterValidator(_dn)]
Filter = Annotated[str, StringConstraints(min_length=2, max_length=2000), AfterValidator(_filter)]
Attribute = Annotated[str, StringConstraints(max_length=100), AfterValidator(_attribute)]


class GroupMode(StrEnum):
    """How a user's groups are found."""

    SEARCH = "search"  # groups under group_base_dn whose member attribute names the user
    MEMBER_OF = "member_of"  # the user's own memberOf (OpenLDAP memberof overlay, AD)
    NESTED = "nested"  # AD: every group, transitively (LDAP_MATCHING_RULE_IN_CHAIN)
    NONE = "none"


class LdapParams(BaseModel):
    """An OpenLDAP (or any RFC 4511) directory."""

    model_config = ConfigDict(extra="forbid")
    # A CA file is read from the broker host's disk: only a global admin may name one.
    host_side_params: ClassVar[frozenset[str]] = frozenset({"ca_file"})

    servers: list[ServerUrl] = Field(
        min_length=1, max_length=16, description="tried in order (or in turn) for failover"
    )
    server_order: Literal["first", "round_robin"] = "first"
    start_tls: bool = Field(default=False, description="StartTLS on ldap:// servers")
    verify_tls: bool = True
    ca_file: Annotated[str, StringConstraints(max_length=1000)] | None = Field(
        default=None, description="a CA bundle on the broker host (global admins only)"
    )
    base_dn: Dn
    user_filter: Filter = "(objectClass=inetOrgPerson)"
    user_attribute: Attribute = "uid"
    upn_attribute: Attribute | None = Field(
        default=None, description="searched instead when the name holds an @"
    )
    bind_dn: Dn | None = Field(
        default=None, description="the service account; its password is the bind_password secret"
    )
    group_mode: GroupMode = GroupMode.SEARCH
    group_base_dn: Dn | None = None
    group_filter: Filter = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))"
    group_member_attribute: Attribute = "member"
    group_name_attribute: Attribute = "cn"
    display_name_attribute: Attribute = "cn"
    email_attribute: Attribute = "mail"
    attributes: list[Attribute] = Field(
        default_factory=list, max_length=50, description="copied for assignment rules"
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="per LDAP operation")
    dead_server_retry_s: float = Field(
        default=30.0, ge=0, le=3600, description="how long a dead server is skipped"
    )
    pool_size: int = Field(default=4, ge=0, le=64, description="idle connections kept")

    def outbound_targets(self) -> list[Target]:
        return [Target.url(f"servers.{i}", url) for i, url in enumerate(self.servers)]


class ActiveDirectoryParams(LdapParams):
    """Active Directory: the same protocol with AD's names and nested groups."""

    user_filter: Filter = "(&(objectCategory=person)(objectClass=user))"
    user_attribute: Attribute = "sAMAccountName"
    upn_attribute: Attribute | None = "userPrincipalName"
    group_mode: GroupMode = GroupMode.NESTED
    group_filter: Filter = "(objectClass=group)"
    display_name_attribute: Attribute = "displayName"

"""Shortcuts for the identity tests: sources and group policies through the admin API."""

from __future__ import annotations

from typing import Any

from tests.helpers import Api
from tests.identity.directories import (
    AD_BASE,
    AD_DOMAIN,
    AD_SERVICE,
    AD_SERVICE_PASSWORD,
    LDAP_BASE,
    LDAP_SERVICE,
    LDAP_SERVICE_PASSWORD,
    SambaDc,
    Slapd,
)


def ldap_params(slapd: Slapd, **extra: Any) -> dict[str, Any]:
    return {
        "servers": [slapd.url],
        "base_dn": f"ou=people,{LDAP_BASE}",
        "group_base_dn": f"ou=groups,{LDAP_BASE}",
        "bind_dn": LDAP_SERVICE,
        "attributes": ["departmentNumber"],
        "timeout_s": 5,
        "connect_timeout_s": 2,
        **extra,
    }


def ad_params(dc: SambaDc, **extra: Any) -> dict[str, Any]:
    return {
        "servers": [dc.url()],
        "verify_tls": False,  # the DC's self-signed test certificate
        "base_dn": AD_BASE,
        "bind_dn": AD_SERVICE,
        "attributes": ["department"],
        "timeout_s": 5,
        "connect_timeout_s": 2,
        **extra,
    }


def add_source(
    api: Api,
    name: str,
    kind: str,
    params: dict[str, Any],
    *,
    domain: str = "",
    password: str | None = None,
    position: int = 10,
) -> dict[str, Any]:
    """An identity source created by the admin API, its bind password a sealed secret."""
    body: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "domain": domain,
        "params": params,
        "position": position,
    }
    if password is not None:
        body["secrets"] = {"bind_password": password}
    return api.post("identity-sources", body)


def add_ldap_source(api: Api, slapd: Slapd, **extra: Any) -> dict[str, Any]:
    return add_source(
        api,
        "example",
        "ldap",
        ldap_params(slapd, **extra),
        domain="example.org",
        password=LDAP_SERVICE_PASSWORD,
    )


def add_ad_source(api: Api, dc: SambaDc, **extra: Any) -> dict[str, Any]:
    return add_source(
        api,
        "corp",
        "activedirectory",
        ad_params(dc, **extra),
        domain=AD_DOMAIN,
        password=AD_SERVICE_PASSWORD,
    )


def group_policy(
    api: Api, source_id: str, group: str, *, machines: int = 2, tag: str = ""
) -> dict[str, str]:
    """A pool and policy, handed out by a rule on ``group`` of ``source_id``."""
    center = api.post(
        "centers",
        {
            "name": f"{tag}{group}-center",
            "kind": "static",
            "params": {
                "machines": [
                    {"name": f"{tag}{group.lower()}-{i}", "address": f"127.0.3.{i + 1}"}
                    for i in range(machines)
                ]
            },
        },
    )
    pool = api.post("pools", {"name": f"{tag}{group}-pool", "center_ids": [center["id"]]})
    policy = api.post(
        "policies", {"name": f"{tag}{group}-policy", "entries": [{"pool_id": pool["id"]}]}
    )
    api.post(
        "assignment-rules",
        {
            "identity_source_id": source_id,
            "name": f"members of {group}",
            "conditions": {"group": group},
            "policy_id": policy["id"],
        },
    )
    return {"pool": pool["id"], "policy": policy["id"]}

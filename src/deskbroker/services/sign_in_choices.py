"""What a tenant's login page offers: its enabled identity sources by name and domain, and
whether each takes a password or sends the browser to a provider (OpenID Connect).

This is what any login page shows to anyone, so it needs no token; it names nothing but
the sources (never a user, a server or a setting), and an unknown tenant answers as one
without sources."""

from __future__ import annotations

from dataclasses import dataclass

from deskbroker.services.context import BrokerContext

# Source kinds whose sign-in happens at a provider the browser is sent to.
REDIRECT_KINDS = frozenset({"oidc"})


@dataclass(frozen=True)
class SignInChoice:
    name: str
    domain: str
    kind: str  # "password" or "redirect"


def choices(ctx: BrokerContext, tenant: str | None) -> list[SignInChoice]:
    """The tenant's enabled sources in their configured order (the default tenant when
    none is named), from the per-node config cache: no statement."""
    view = ctx.cache.current(ctx.db)
    tenant_id = view.tenants_by_name.get(tenant or "default")
    if tenant_id is None:
        return []
    return [
        SignInChoice(s.name, s.domain, "redirect" if s.kind in REDIRECT_KINDS else "password")
        for s in view.sources_by_tenant.get(tenant_id, [])
    ]

"""Which identity sources a login name goes to, and why: shared by login and explain."""

from __future__ import annotations

from dataclasses import dataclass

from deskbroker.identity.base import split_domain
from deskbroker.services.config_cache import ConfigView, SourceView


@dataclass(frozen=True)
class Candidate:
    """A source to try, the name to give it, and why it is tried."""

    source: SourceView
    name: str
    why: str


def candidates(
    view: ConfigView, tenant_id: str, username: str, source_name: str | None
) -> list[Candidate]:
    """The tenant's sources to try for ``username``, in order.

    A selector (the login form's source) names one source; otherwise a domain suffix
    (``user@corp.example``, ``CORP\\user``) picks the sources of that domain; otherwise
    every source is tried in its configured order.
    """
    sources = view.sources_by_tenant.get(tenant_id, [])
    if source_name is not None:
        return [
            Candidate(s, username, f"selected by name ({source_name!r})")
            for s in sources
            if s.name == source_name
        ]
    bare, domain = split_domain(username)
    if domain is not None:
        # DOMAIN\user names the NetBIOS domain: by convention the DNS domain's first label.
        down_level = "\\" in username
        by_domain = [
            Candidate(
                s,
                bare,
                f"domain {domain!r} of {username!r} "
                + ("is its domain" if s.domain == domain else f"is the short name of {s.domain!r}"),
            )
            for s in sources
            if s.domain
            and (s.domain == domain or (down_level and s.domain.partition(".")[0] == domain))
        ]
        if by_domain:
            return by_domain
    # Without a domain match the sources are tried in their configured order.
    why = (
        f"no source has the domain {domain!r}; tried in configured order"
        if domain is not None
        else "tried in configured order"
    )
    return [Candidate(s, username, f"{why} (number {n + 1})") for n, s in enumerate(sources)]

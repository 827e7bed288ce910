"""Which identity sources a login name goes to, and why: shared by login and explain.

A password goes only to the source that owns the account. A name the broker knows (a row
in users, in any letter case) is tried at its own source and nowhere else, so a source
added in front of it (a directory a tenant administrator runs) never sees that user's
password; directories are tried in order only for names no source holds. A domain or
the login form's selector routes first; the owner rule then applies within the route
(a selector names one source, which is the user's own choice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deskbroker.domain.accounts import UserRecord
from deskbroker.errors import BadRequest, Unauthorized
from deskbroker.identity.base import source_kinds, split_domain
from deskbroker.services.config_cache import ConfigView, SourceView
from deskbroker.store import accounts, claims
from deskbroker.store.db import Unit

WRONG_CREDENTIALS = "Wrong username or password."


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


@dataclass(frozen=True)
class Choice:
    """The sources a login tries, in order, and the broker's rows of the name."""

    candidates: list[Candidate]
    owners: list[UserRecord] = field(default_factory=list)

    def record(self, source_id: str, username: str) -> UserRecord | None:
        """The broker's row of exactly this name at this source, if it was read."""
        mine = (r for r in self.owners if r.identity_source_id == source_id)
        return next((r for r in mine if r.username == username), None)


def _takes_passwords(source: SourceView) -> bool:
    kind = source_kinds().get(source.kind)
    return kind is None or kind.accepts_passwords


def _whole_name_owners(
    session: Unit, view: ConfigView, tenant_id: str, username: str, bare: str
) -> tuple[list[Candidate] | None, list[UserRecord]]:
    """The sources of accounts whose name is the whole typed name (``alice@example.org``
    of a local source), read with the bare name's owners in one statement. Such an
    account wins over domain routing: a directory given that domain by whoever may add
    sources must not be sent its password."""
    owners = claims.find_owners(session, tenant_id, username, bare)
    whole = {r.identity_source_id for r in owners if split_domain(r.username)[1] is not None}
    if not whole:
        return None, owners
    mine = [
        Candidate(s, username, f"{username!r} is, as typed, the name of an account of this source")
        for s in view.sources_by_tenant.get(tenant_id, [])
        if s.id in whole
    ]
    return mine, owners


def choose(
    session: Unit, view: ConfigView, tenant_id: str, username: str, source_name: str | None
) -> Choice:
    """``candidates`` narrowed to the source that owns the name: one statement (two for
    a name nobody holds when a source that a global administrator did not set up would
    be tried).

    The owner is looked for in every source of the tenant, so a name whose source is
    disabled goes nowhere rather than to the sources in front of it. A typed name that
    is, with its ``@domain``, an account's whole name goes to that account's source
    before any domain routing.

    Several password sources holding the name (two domains with a ``jdoe`` each) make it
    ambiguous: the answer asks for the domain or the source rather than send one
    person's password to the other's directory. No source wins a tie by having no
    domain: a tenant administrator can make a twin of any name in a source of theirs.

    A name no source holds, typed without a domain or a selector, goes in a tenant that
    holds a global administrator only to the sources a global administrator last set up:
    that is what a global administrator's mistyped name looks like, and a tenant
    administrator's directory must not be sent it. Its users name their domain or source
    on their first sign-in.
    """
    bare, domain = split_domain(username)
    whole: list[Candidate] | None = None
    if source_name is None and domain is not None:
        whole, owners = _whole_name_owners(session, view, tenant_id, username, bare)
        routed = whole if whole is not None else candidates(view, tenant_id, username, None)
        if not routed:
            return Choice([], owners)
    else:
        routed = candidates(view, tenant_id, username, source_name)
        if not routed:
            return Choice([])
        owners = claims.find_owners(session, tenant_id, routed[0].name)
    # Every candidate of one route is given the same name (bare after a domain).
    name = routed[0].name
    # The statement read both spellings after a domain; the route's own is the one.
    whole_route = name == username and domain is not None
    named = [r for r in owners if (split_domain(r.username)[1] is not None) == whole_route]
    owning = {r.identity_source_id for r in named}
    if source_name is not None:
        return Choice(routed, owners)
    mine = [c for c in routed if c.source.id in owning]
    if not mine:
        if owning and name == username:
            # In configured order, every enabled source was routed: the account's own
            # source is switched off, and no other source is sent its password.
            return Choice([], owners)
        if (
            domain is None
            and source_name is None
            and any(not c.source.set_by_global_admin for c in routed)
            and accounts.holds_global_admin(session, tenant_id)
        ):
            # A global admin's typo looks like this: only sources a global admin set up
            # are sent it.
            routed = [c for c in routed if c.source.set_by_global_admin]
        # Nobody's name (or, after a domain, not an account of that domain's sources).
        return Choice(routed, owners)
    # A source that takes no password cannot receive one: it only says where to sign in.
    with_password = [c for c in mine if _takes_passwords(c.source)]
    if len(with_password) > 1:
        names = ", ".join(c.source.name for c in with_password)
        raise BadRequest(
            f"{username!r} is the name of accounts in more than one identity source ({names}): "
            "sign in with your domain (name@domain) or choose your source",
            reason="ambiguous_name",
        )
    return Choice(
        [
            Candidate(
                c.source,
                c.name,
                f"{c.why}; the account belongs to this source, so no other source is sent "
                "the password",
            )
            for c in (with_password or mine)
        ],
        owners,
    )


def refuse_a_twin(
    view: ConfigView,
    tenant_id: str,
    source: SourceView,
    username: str,
    owners: list[UserRecord],
    by_domain: bool,
) -> None:
    """A directory's first sign-in of ``username`` makes no second account of a name
    another password source of the tenant holds (any letter case): a tenant
    administrator's directory, asked by selector or answering any name with ``admin``,
    would otherwise make a twin of the global administrator that routing then has to
    choose between. Refused as a wrong password is, with its own audit reason.

    One exception keeps two untrusted domains' namesakes apart as two users: an ordinary
    user's name (role ``user``) may have a twin in a directory that the typed domain
    chose. A staff account's name (any other role) has none, however it was typed."""
    enabled = {s.id: s for s in view.sources_by_tenant.get(tenant_id, [])}
    folded = username.casefold()
    for row in owners:
        if row.identity_source_id == source.id or row.username.casefold() != folded:
            continue
        if by_domain and row.role == "user":
            continue
        other = enabled.get(row.identity_source_id)
        # A disabled source's account still holds its name (its kind is not at hand).
        kind = source_kinds().get(other.kind) if other is not None else None
        if other is None or kind is None or kind.accepts_passwords:
            raise Unauthorized(WRONG_CREDENTIALS, reason="name_held_by_another_source")

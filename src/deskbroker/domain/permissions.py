"""Permissions: what a role may do, as ``resource:action`` grants.

A resource is an admin API collection (``pools``, ``sessions``...); an action is ``read``,
``create``, ``update``, ``delete`` or an operation's own verb (``scan``, ``power``,
``end``). ``*`` stands for every resource or every action, so ``*:read`` is read-only
everywhere and ``pools:*`` is full control of pools. Built-in roles are fixed sets;
custom roles are sets an administrator writes, never more than the writer holds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from deskbroker.errors import InvalidInput

WILDCARD = "*"
READ = "read"
_GRANT = re.compile(r"^(\*|[a-z][a-z0-9-]{0,39}):(\*|[a-z][a-z0-9-]{0,39})$")


class BuiltinRole(StrEnum):
    """Roles every tenant has; their grants are fixed here."""

    USER = "user"
    HELPDESK = "helpdesk"
    AUDITOR = "auditor"
    TENANT_ADMIN = "tenant_admin"
    GLOBAL_ADMIN = "global_admin"


@dataclass(frozen=True)
class Grant:
    """One ``resource:action`` pair, either side possibly ``*``."""

    resource: str
    action: str

    @classmethod
    def parse(cls, text: str) -> Grant:
        found = _GRANT.match(text.strip().lower())
        if found is None:
            raise InvalidInput(
                f"{text!r} is not a permission: write resource:action, for example "
                "pools:read, sessions:end, desktops:* or *:read"
            )
        return cls(found.group(1), found.group(2))

    def covers(self, resource: str, action: str) -> bool:
        return self.resource in (WILDCARD, resource) and self.action in (WILDCARD, action)

    def __str__(self) -> str:
        return f"{self.resource}:{self.action}"


class Permissions:
    """A set of grants; answers whether one action on one resource is allowed."""

    def __init__(self, grants: Iterable[Grant], limit: Permissions | None = None) -> None:
        self.grants = frozenset(grants)
        self.limit = limit

    @classmethod
    def of(cls, texts: Iterable[str]) -> Permissions:
        return cls(Grant.parse(t) for t in texts)

    def allows(self, resource: str, action: str) -> bool:
        return any(g.covers(resource, action) for g in self.grants) and (
            self.limit is None or self.limit.allows(resource, action)
        )

    def narrowed(self, limit: Permissions) -> Permissions:
        """What both these grants and ``limit`` allow (a role seen through token scopes)."""
        return Permissions(self.grants, limit)

    @property
    def empty(self) -> bool:
        return not self.grants

    def expand(self, catalog: Mapping[str, frozenset[str]]) -> set[tuple[str, str]]:
        """Every concrete (resource, action) of the catalog these grants allow."""
        return {
            (resource, action)
            for resource, actions in catalog.items()
            for action in actions
            if self.allows(resource, action)
        }

    def within(self, other: Permissions, catalog: Mapping[str, frozenset[str]]) -> set[str]:
        """What these grants allow that ``other`` does not (empty when within it)."""
        return {f"{r}:{a}" for r, a in self.expand(catalog) if not other.allows(r, a)}

    def texts(self) -> list[str]:
        return sorted(str(g) for g in self.grants)


# Helpdesk: read everything, and act on sessions and the desktops under them.
HELPDESK_ACTIONS = ("sessions:*", "desktops:power", "desktops:probe", "assignments:delete")

BUILTIN: dict[str, Permissions] = {
    BuiltinRole.USER: Permissions(()),
    BuiltinRole.AUDITOR: Permissions.of(["*:read"]),
    BuiltinRole.HELPDESK: Permissions.of(["*:read", *HELPDESK_ACTIONS]),
    BuiltinRole.TENANT_ADMIN: Permissions.of(["*:*"]),
    BuiltinRole.GLOBAL_ADMIN: Permissions.of(["*:*"]),
}


def check_grants(texts: Iterable[str], catalog: Mapping[str, frozenset[str]]) -> list[str]:
    """Validate grants against the API's resources and actions; returns them normalised."""
    out: list[str] = []
    for text in texts:
        grant = Grant.parse(text)
        if grant.resource != WILDCARD and grant.resource not in catalog:
            raise InvalidInput(
                f"unknown resource {grant.resource!r} in {text!r}; resources: "
                + ", ".join(sorted(catalog))
            )
        if grant.action != WILDCARD:
            known = catalog[grant.resource] if grant.resource != WILDCARD else None
            every = set().union(*catalog.values()) if catalog else set()
            if (known is not None and grant.action not in known) or grant.action not in every:
                offered = sorted(known if known is not None else every)
                raise InvalidInput(
                    f"unknown action {grant.action!r} in {text!r}; actions: " + ", ".join(offered)
                )
        if str(grant) not in out:
            out.append(str(grant))
    return out

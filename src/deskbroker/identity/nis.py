"""NIS (YP) identity source: passwd, group and shadow maps from ypserv, over ONC RPC.

A login fetches the user's passwd entry (YPPROC_MATCH), and when it holds ``x`` the
shadow entry (from a privileged source port, as ypserv demands), then verifies the
password against the crypt(3) hash with libxcrypt (``unixcrypt``). Groups are the
group map's entries naming the user plus the group of their primary gid; NIS has no
index by member, so the whole map is read (YPPROC_ALL) and kept ``group_cache_s``.

A user missing from the map costs the same as a wrong password: the password is hashed
against a decoy made with the setting (method, cost) of a real hash seen before.
Hashes of ``!…`` (``passwd -l``) are locked accounts; ``*``, ``!`` alone or an empty
field are accounts with no password at all. Both are refused with "locked", the
former only after the right password, the latter for any password (it cannot be
checked), which tells whoever asks that such an account exists.

The calls block: the login route runs in FastAPI's thread pool, off the event loop.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, cast

from pydantic import BaseModel

from deskbroker.domain.accounts import UserRecord
from deskbroker.domain.rules import Identity
from deskbroker.errors import AccountRefused
from deskbroker.identity import unixcrypt
from deskbroker.identity.base import Credentials, IdentitySourceDriver
from deskbroker.identity.nis_entries import (
    PasswdEntry,
    ShadowEntry,
    parse_group,
    parse_passwd,
    parse_shadow,
)
from deskbroker.identity.nis_params import NisParams
from deskbroker.identity.nis_servers import NisServers
from deskbroker.identity.yp import MAX_RECORD, all_entries, match
from deskbroker.security import PasswordHashing

log = logging.getLogger("deskbroker.identity.nis")

LOCKED = "This account is locked in NIS; ask your administrator."
PASSWORD_EXPIRED = (
    "Your password has expired; change it (for example with yppasswd or when you next log "
    "in to your workstation), then log in here again."
)
ACCOUNT_EXPIRED = "This account has expired in NIS; ask your administrator."

# What shadow-less passwd maps write instead of a hash.
_SHADOWED = {"x", "*NP*"}
# A method's prefix: "$y$", "$6$", "$2b$"...; traditional DES has none.
_METHOD = re.compile(r"^\$[^$]+\$")
_NAME_FORBIDDEN = re.compile(r"[:\s\x00-\x1f]")


@dataclass(frozen=True)
class _Groups:
    by_member: Mapping[str, frozenset[str]]
    by_gid: Mapping[int, str]
    read_at: float


class NisIdentitySource(IdentitySourceDriver):
    """A NIS domain: users from the passwd map, groups from the group map."""

    kind: ClassVar[str] = "nis"
    Params: ClassVar[type[BaseModel]] = NisParams
    provisions_users: ClassVar[bool] = True

    def __init__(
        self, params: Mapping[str, Any], secrets: Mapping[str, str], hashing: PasswordHashing
    ) -> None:
        super().__init__(params, secrets, hashing)
        self.p = cast(NisParams, self.params)
        self.servers = NisServers(self.p)
        self._lock = threading.Lock()
        self._groups: _Groups | None = None
        self._methods: Counter[str] = Counter()  # hash methods seen, for the decoy
        self._shadowed = False  # whether this site's passwd map points to a shadow map
        self._decoy = unixcrypt.hash_password(_random_secret())

    # --- the seam ----------------------------------------------------------------------
    def authenticate(self, credentials: Credentials, known: UserRecord | None) -> Identity | None:
        name, password = credentials.username, credentials.password
        entry = self._passwd(name) if _plausible(name) else None
        if entry is None or not password:
            if entry is None and self._shadowed and _plausible(name):
                self._shadow(name)  # the round trip a known user's login makes
            self._spend_like_a_check(password)
            return None
        hashed, shadow = self._password_hash(entry)
        locked = hashed.startswith("!")
        usable = hashed.lstrip("!")
        if not usable or usable.startswith("*") or usable in _SHADOWED:
            self._spend_like_a_check(password)
            log.info("NIS account %s has no usable password hash", entry.name)
            raise AccountRefused(LOCKED, reason="locked")
        if not unixcrypt.verify(password, usable):
            self._remember_setting(usable)
            return None
        self._remember_setting(usable)
        if locked:
            log.info("NIS account %s is locked", entry.name)
            raise AccountRefused(LOCKED, reason="locked")
        if shadow is not None:
            _check_aging(shadow)
        return self._identity(entry)

    def lookup(self, username: str, known: UserRecord | None) -> Identity | None:
        entry = self._passwd(username) if _plausible(username) else None
        return None if entry is None else self._identity(entry)

    # --- maps --------------------------------------------------------------------------
    def _password_hash(self, entry: PasswdEntry) -> tuple[str, ShadowEntry | None]:
        """The user's hash: from passwd, or from the shadow map when passwd says ``x``."""
        if entry.hashed not in _SHADOWED:
            return entry.hashed, None
        self._shadowed = True
        shadow = self._shadow(entry.name)
        if shadow is not None:
            return shadow.hashed, shadow
        if self.p.shadow_map is None:
            log.warning("passwd says %r for %s but no shadow_map is set", entry.hashed, entry.name)
        return "*", None  # shadowed, but no shadow entry: no password to check

    def _passwd(self, name: str) -> PasswdEntry | None:
        domain, map_name, key = self.p.domain, self.p.passwd_map, name.encode()
        value = self.servers.run(lambda c: match(c, domain, map_name, key))
        entry = None if value is None else parse_passwd(value)
        if value is not None and entry is None:
            log.warning("unreadable entry for %s in %s", name, map_name)
        # ypserv matches keys exactly, but a map built by hand might not agree with itself.
        return entry if entry is not None and entry.name == name else None

    def _shadow(self, name: str) -> ShadowEntry | None:
        if self.p.shadow_map is None:
            return None
        domain, map_name, key = self.p.domain, self.p.shadow_map, name.encode()
        value = self.servers.run(lambda c: match(c, domain, map_name, key), reserved=True)
        entry = None if value is None else parse_shadow(value)
        return entry if entry is not None and entry.name == name else None

    def _group_map(self) -> _Groups | None:
        if self.p.group_map is None:
            return None
        with self._lock:
            cached = self._groups
        if cached is not None and time.monotonic() - cached.read_at < self.p.group_cache_s:
            return cached
        domain, map_name = self.p.domain, self.p.group_map
        raw = self.servers.run(lambda c: all_entries(c, domain, map_name))
        members: dict[str, set[str]] = {}
        by_gid: dict[int, str] = {}
        for _, value in raw:
            group = parse_group(value)
            if group is None:
                continue
            by_gid.setdefault(group.gid, group.name)
            for member in group.members:
                members.setdefault(member, set()).add(group.name)
        fresh = _Groups({m: frozenset(g) for m, g in members.items()}, by_gid, time.monotonic())
        with self._lock:
            self._groups = fresh
        return fresh

    def groups_of(self, entry: PasswdEntry) -> frozenset[str]:
        """The user's groups: every group naming them, and their primary group."""
        groups = self._group_map()
        if groups is None:
            return frozenset()
        primary = groups.by_gid.get(entry.gid)
        found = set(groups.by_member.get(entry.name, frozenset()))
        if primary is not None:
            found.add(primary)
        return frozenset(found)

    def _identity(self, entry: PasswdEntry) -> Identity:
        return Identity(
            username=entry.name,
            groups=self.groups_of(entry),
            attributes={
                "uid": str(entry.uid),
                "gid": str(entry.gid),
                "home": entry.home,
                "shell": entry.shell,
                "gecos": entry.gecos,
            },
            display_name=entry.full_name,
            email=f"{entry.name}@{self.p.email_domain}" if self.p.email_domain else "",
        )

    # --- timing ------------------------------------------------------------------------
    def _spend_like_a_check(self, password: str) -> None:
        """Hash against the decoy, so an unknown name costs what a wrong password does."""
        with self._lock:
            decoy = self._decoy
        unixcrypt.verify(password, decoy)

    def _remember_setting(self, hashed: str) -> None:
        """Let the decoy follow the site's most common method (yescrypt, sha512...).

        With one method in the map an unknown name costs exactly what a known one does;
        with several, what most users' hashes cost."""
        method = _method(hashed)
        with self._lock:
            self._methods[method] += 1
            current = _method(self._decoy)
            if method == current or self._methods[method] <= self._methods[current]:
                return
        decoy = unixcrypt.crypt(_random_secret(), hashed)
        if decoy is not None:
            with self._lock:
                self._decoy = decoy


def _method(hashed: str) -> str:
    found = _METHOD.match(hashed)
    return found.group(0) if found else ""


def _random_secret() -> str:
    return secrets.token_urlsafe(24)


def _plausible(name: str) -> bool:
    """A name that could be a key of the passwd map (anything else is a wrong name)."""
    return 0 < len(name.encode()) <= MAX_RECORD and not _NAME_FORBIDDEN.search(name)


def _check_aging(shadow: ShadowEntry) -> None:
    today = datetime.now(UTC).date()
    if shadow.account_expired(today):
        raise AccountRefused(ACCOUNT_EXPIRED, reason="account_expired")
    if shadow.password_expired(today):
        raise AccountRefused(PASSWORD_EXPIRED, reason="password_expired")

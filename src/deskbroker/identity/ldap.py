"""LDAP (OpenLDAP) and Active Directory identity sources, through ldap3.

A login binds as the service account (pooled) to find the user and their groups, then
binds as the user with their password on a second pooled connection. Passwords are never
logged. The calls block: the login route is a plain ``def``, so FastAPI runs it, and
these calls with it, in its thread pool, off the event loop.

What a refused bind means is read from the directory's answer:

- Active Directory puts a code in the bind result's message (``data 775``): 52e wrong
  password, 525 no such user, 530 not at this time, 531 not from this workstation,
  532 password expired, 533 disabled, 701 account expired, 773 password must be changed
  (``pwdLastSet`` = 0), 775 locked out.
- OpenLDAP says nothing beyond ``invalidCredentials`` unless the ppolicy overlay runs;
  the bind asks for its response control (draft-behera), which tells passwordExpired,
  accountLocked and changeAfterReset. Without ppolicy a locked or expired account is
  indistinguishable from a wrong password, and the user hears "Wrong username or
  password."
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from secrets import token_hex
from typing import Any, ClassVar, cast

from ldap3 import SIMPLE, SUBTREE, Connection
from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn
from pydantic import BaseModel

from deskbroker.domain.accounts import UserRecord
from deskbroker.domain.rules import Identity
from deskbroker.errors import AccountRefused, DeskbrokerError, DirectoryUnavailable
from deskbroker.identity.base import Credentials, IdentitySourceDriver
from deskbroker.identity.ldap_params import ActiveDirectoryParams, GroupMode, LdapParams
from deskbroker.identity.ldap_pool import Directory
from deskbroker.security import PasswordHashing

log = logging.getLogger("deskbroker.identity.ldap")

PPOLICY_OID = "1.3.6.1.4.1.42.2.27.8.5.1"
PAGED_OID = "1.2.840.113556.1.4.319"
IN_CHAIN = "1.2.840.113556.1.4.1941"  # LDAP_MATCHING_RULE_IN_CHAIN
_AD_DATA = re.compile(r"\bdata ([0-9a-fA-F]{3,4})\b")

LOCKED = (
    "This account is locked after too many failed logins; wait a while, or ask your "
    "administrator to unlock it."
)
DISABLED = "This account is disabled in the directory; ask your administrator."
PASSWORD_EXPIRED = (
    "Your password has expired; change it (for example when you next log in to your "
    "workstation), then log in here again."
)
ACCOUNT_EXPIRED = "This account has expired in the directory; ask your administrator."
RESTRICTED = "This account may not log in at this time or from here; ask your administrator."
SERVICE_REFUSED = (
    "The directory refused the broker's service account; ask your administrator to check "
    "bind_dn and the bind_password secret of this identity source."
)
NEEDS_TLS = (
    "The directory refuses passwords over an unencrypted connection; ask your administrator "
    "to use an ldaps:// server or start_tls."
)
SEARCH_FAILED = (
    "The directory did not complete the broker's search for this account; ask your "
    "administrator to check base_dn, group_base_dn and the filters of this identity source."
)
BUSY = "The directory is unavailable for a moment; try again shortly."

# Search results that tell nothing about the user: the directory was out of time, over a
# limit, busy or unavailable. Read as "no such user" (or "no groups") they would pass a
# struggling directory off as an answer, and a periodic re-check would act on it.
_SEARCH_BUSY = frozenset({3, 11, 51, 52})

# Active Directory's extended error codes, and ppolicy's error enumeration.
_AD_REFUSALS = {
    "530": ("restricted", RESTRICTED),
    "531": ("restricted", RESTRICTED),
    "532": ("password_expired", PASSWORD_EXPIRED),
    "533": ("disabled", DISABLED),
    "701": ("account_expired", ACCOUNT_EXPIRED),
    "773": ("password_expired", PASSWORD_EXPIRED),
    "775": ("locked", LOCKED),
}
_PPOLICY_REFUSALS = {
    0: ("password_expired", PASSWORD_EXPIRED),
    1: ("locked", LOCKED),
    2: ("password_expired", PASSWORD_EXPIRED),  # changeAfterReset: must change first
}


def ppolicy_error(controls: Mapping[str, Any] | None) -> int | None:
    """The ``error`` of a ppolicy response control (BER ``[1] ENUMERATED``), if any."""
    control = (controls or {}).get(PPOLICY_OID) or {}
    value = control.get("value")
    if not isinstance(value, bytes) or len(value) < 2 or value[0] != 0x30:
        return None
    pos, end = 2, 2 + value[1]
    while pos + 2 <= min(end, len(value)):
        tag, length = value[pos], value[pos + 1]
        if tag == 0x81 and length >= 1:
            return int.from_bytes(value[pos + 2 : pos + 2 + length], "big")
        pos += 2 + length
    return None


def refusal(result: Mapping[str, Any]) -> AccountRefused | None:
    """Why the directory refuses an account whose password it was given, if it says so."""
    found: tuple[str, str] | None = None
    if result.get("result") == 49:
        match = _AD_DATA.search(str(result.get("message") or ""))
        if match:
            found = _AD_REFUSALS.get(match.group(1).lower())
    error = ppolicy_error(result.get("controls"))
    # A successful bind can still carry changeAfterReset: the password must change.
    if found is None and error is not None and (result.get("result") == 49 or error == 2):
        found = _PPOLICY_REFUSALS.get(error)
    if found is None:
        return None
    return AccountRefused(found[1], reason=found[0])


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _values(attributes: Mapping[str, Any], name: str) -> list[str]:
    value = attributes.get(name)
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [_text(v) for v in value]
    return [_text(value)]


def _rdn_value(dn: str) -> str:
    try:
        return str(parse_dn(dn)[0][1])
    except (LDAPInvalidDnError, IndexError):
        return dn


def _parent(dn: str) -> str:
    try:
        parts = parse_dn(dn)
    except LDAPInvalidDnError:
        return ""
    return ",".join(f"{attr}={value}" for attr, value, _ in parts[1:])


def _check_search(result: Mapping[str, Any] | None, ok: tuple[int, ...]) -> None:
    """Raise ``DirectoryUnavailable`` when a search did not complete (its result code is
    not in ``ok``): what it found, if anything, says nothing about the user."""
    code = (result or {}).get("result")
    if code in ok:
        return
    log.warning(
        "directory search failed: %s %s",
        (result or {}).get("description"),
        (result or {}).get("message"),
    )
    if code in _SEARCH_BUSY:
        raise DirectoryUnavailable(BUSY, reason="busy")
    raise DirectoryUnavailable(SEARCH_FAILED, reason="search_failed")


@dataclass(frozen=True)
class _Entry:
    dn: str
    attributes: Mapping[str, Any]
    groups: frozenset[str] = frozenset()


class LdapIdentitySource(IdentitySourceDriver):
    """An LDAP directory: search with the service account, then bind as the user."""

    kind: ClassVar[str] = "ldap"
    Params: ClassVar[type[BaseModel]] = LdapParams
    provisions_users: ClassVar[bool] = True

    def __init__(
        self, params: Mapping[str, Any], secrets: Mapping[str, str], hashing: PasswordHashing
    ) -> None:
        super().__init__(params, secrets, hashing)
        self.p = cast(LdapParams, self.params)
        self.directory = Directory(self.p)
        # How long refusing a real user's wrong password takes, search and bind (moving
        # average): an unknown name waits as long, so timing does not tell who exists.
        self._refusal_s: float | None = None

    # --- the seam ----------------------------------------------------------------------
    def authenticate(self, credentials: Credentials, known: UserRecord | None) -> Identity | None:
        if not credentials.password or not credentials.username:
            return None  # an empty password is an unauthenticated bind, which "succeeds"
        started = time.perf_counter()
        entry = self._find(credentials.username)
        if entry is None:
            self._decoy_bind(credentials.password, started)
            return None
        dn, password = entry.dn, credentials.password
        bound = self.directory.run("user", _nothing, lambda c: self._bind_user(c, dn, password))
        if not bound:
            took = time.perf_counter() - started
            last = self._refusal_s
            self._refusal_s = took if last is None else 0.8 * last + 0.2 * took
        return self._identity(entry, credentials.username) if bound else None

    def lookup(self, username: str, known: UserRecord | None) -> Identity | None:
        entry = self._find(username)
        return None if entry is None else self._identity(entry, username)

    def close(self) -> None:
        self.directory.close()

    # --- binds -------------------------------------------------------------------------
    def _bind_service(self, conn: Connection) -> None:
        if self.p.bind_dn is not None:
            conn.user = self.p.bind_dn
            conn.password = self.secrets.get("bind_password", "")
            conn.authentication = SIMPLE
        if not conn.bind():
            self._refused_service(conn.result)

    def _decoy_bind(self, password: str, started: float) -> None:
        """A bind as nobody, for a name the directory does not know, padded to the time
        a real wrong password takes from ``started`` (a found user's search also reads
        their groups, and the directory records the failure on the entry): the time
        taken does not tell who exists. The DN names no entry, so no real account is
        ever locked."""
        decoy = f"cn=deskbroker-decoy-{token_hex(8)},{self.p.base_dn}"
        # Whatever the directory says of a DN that does not exist is moot.
        with suppress(DeskbrokerError):
            self.directory.run("user", _nothing, lambda c: self._bind_user(c, decoy, password))
        if self._refusal_s is not None:
            time.sleep(max(0.0, self._refusal_s - (time.perf_counter() - started)))

    def _refused_service(self, result: Mapping[str, Any]) -> None:
        if result.get("result") in (8, 13):
            raise DirectoryUnavailable(NEEDS_TLS, reason="needs_tls")
        log.warning(
            "service account bind refused: %s %s", result.get("description"), result.get("message")
        )
        raise DirectoryUnavailable(SERVICE_REFUSED, reason="service_account")

    def _bind_user(self, conn: Connection, dn: str, password: str) -> bool:
        conn.user = dn
        conn.password = password
        conn.authentication = SIMPLE
        try:
            ok = bool(conn.bind(controls=[(PPOLICY_OID, False, None)]))
        finally:
            conn.password = None  # not kept on an idle pooled connection
        result = conn.result or {}
        refused = refusal(result)
        if refused is not None:
            log.info("directory refused %s: %s", dn, refused.extra.get("reason"))
            raise refused
        if not ok and result.get("result") in (8, 13):
            raise DirectoryUnavailable(NEEDS_TLS, reason="needs_tls")
        if not ok and result.get("result") in (51, 52):  # busy, unavailable
            raise DirectoryUnavailable(BUSY, reason="busy")
        return ok

    # --- searches ----------------------------------------------------------------------
    def _find(self, name: str) -> _Entry | None:
        return self.directory.run("service", self._bind_service, lambda c: self._search(c, name))

    def _search(self, conn: Connection, name: str) -> _Entry | None:
        p = self.p
        attribute = p.upn_attribute if p.upn_attribute and "@" in name else p.user_attribute
        query = f"(&{p.user_filter}({attribute}={escape_filter_chars(name)}))"
        wanted = {p.user_attribute, p.display_name_attribute, p.email_attribute, *p.attributes}
        if p.group_mode is GroupMode.MEMBER_OF:
            wanted.add("memberOf")
        conn.search(
            p.base_dn,
            query,
            SUBTREE,
            attributes=sorted(wanted),
            size_limit=2,
            time_limit=int(max(1, p.timeout_s)),
        )
        # sizeLimitExceeded: more entries than one match, refused below.
        _check_search(conn.result, ok=(0, 4))
        entries = [r for r in conn.response or [] if r.get("type") == "searchResEntry"]
        if len(entries) != 1:
            if len(entries) > 1:
                log.warning("%d entries match %s=%s; refusing", len(entries), attribute, name)
            return None
        found = _Entry(str(entries[0]["dn"]), dict(entries[0]["attributes"]))
        return _Entry(found.dn, found.attributes, frozenset(self._groups(conn, found, name)))

    def _groups(self, conn: Connection, entry: _Entry, name: str) -> Iterable[str]:
        p = self.p
        if p.group_mode is GroupMode.NONE:
            return []
        if p.group_mode is GroupMode.MEMBER_OF:
            dns = _values(entry.attributes, "memberOf")
            # Each group by name and by DN: a rule names a group either way, and the DN
            # tells apart two groups of one name in different OUs.
            return {_rdn_value(dn) for dn in dns} | {dn.lower() for dn in dns}
        member = p.group_member_attribute
        who = name if member.lower() == "memberuid" else entry.dn
        if p.group_mode is GroupMode.NESTED:
            member = f"{member}:{IN_CHAIN}:"
        query = f"(&{p.group_filter}({member}={escape_filter_chars(who)}))"
        names: set[str] = set()
        cookie: bytes | None = None
        while True:
            conn.search(
                p.group_base_dn or p.base_dn,
                query,
                SUBTREE,
                attributes=[p.group_name_attribute],
                paged_size=500,
                paged_cookie=cookie,
                time_limit=int(max(1, p.timeout_s)),
            )
            # A failed group search is no answer either: not a user in no group.
            _check_search(conn.result, ok=(0,))
            for r in conn.response or []:
                if r.get("type") == "searchResEntry":
                    found = _values(r["attributes"], p.group_name_attribute)
                    names.add(found[0] if found else _rdn_value(str(r["dn"])))
                    names.add(str(r["dn"]).lower())
            paged = ((conn.result or {}).get("controls") or {}).get(PAGED_OID) or {}
            cookie = (paged.get("value") or {}).get("cookie")
            if not cookie:
                return names

    def _identity(self, entry: _Entry, typed: str) -> Identity:
        p = self.p
        attrs = entry.attributes
        canonical = _values(attrs, p.user_attribute)
        return Identity(
            username=canonical[0] if canonical else typed,
            groups=entry.groups,
            attributes={
                name: "; ".join(_values(attrs, name)) for name in p.attributes if name in attrs
            },
            ou=_parent(entry.dn),
            display_name=next(iter(_values(attrs, p.display_name_attribute)), ""),
            email=next(iter(_values(attrs, p.email_attribute)), ""),
        )


class ActiveDirectoryIdentitySource(LdapIdentitySource):
    """Active Directory: sAMAccountName or userPrincipalName, nested groups."""

    kind: ClassVar[str] = "activedirectory"
    Params: ClassVar[type[BaseModel]] = ActiveDirectoryParams


def _nothing(conn: Connection) -> None:
    """User-bind connections need no preparation: each use binds anew."""

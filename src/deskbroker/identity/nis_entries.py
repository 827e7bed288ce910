"""Entries of the NIS passwd, group and shadow maps: the colon-separated lines of
passwd(5), group(5) and shadow(5), as ypserv hands them out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

_EPOCH = date(1970, 1, 1)


def _text(value: bytes) -> str:
    # NIS maps carry bytes; maps written by hand may hold Latin-1 GECOS fields.
    try:
        return value.decode().rstrip("\0\n")
    except UnicodeDecodeError:
        return value.decode("latin-1").rstrip("\0\n")


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    hashed: str
    uid: int
    gid: int
    gecos: str
    home: str
    shell: str

    @property
    def full_name(self) -> str:
        """GECOS's first field, by convention the person's name."""
        return self.gecos.split(",", 1)[0].strip()


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: frozenset[str]


@dataclass(frozen=True)
class ShadowEntry:
    name: str
    hashed: str
    last_change: int | None  # days since 1970-01-01; 0 means "must change"
    max_days: int | None
    expire: int | None  # days since 1970-01-01

    def password_expired(self, today: date) -> bool:
        if self.last_change == 0:
            return True
        if self.last_change is None or self.max_days is None or self.max_days >= 99999:
            return False
        return today > _EPOCH + timedelta(days=self.last_change + self.max_days)

    def account_expired(self, today: date) -> bool:
        return self.expire is not None and today >= _EPOCH + timedelta(days=self.expire)


def _number(field: str) -> int | None:
    field = field.strip()
    return int(field) if field.isdigit() else None


def parse_passwd(value: bytes) -> PasswdEntry | None:
    fields = _text(value).split(":")
    if len(fields) < 7 or not fields[0]:
        return None
    uid, gid = _number(fields[2]), _number(fields[3])
    if uid is None or gid is None:
        return None
    return PasswdEntry(fields[0], fields[1], uid, gid, fields[4], fields[5], ":".join(fields[6:]))


def parse_group(value: bytes) -> GroupEntry | None:
    fields = _text(value).split(":")
    if len(fields) < 4 or not fields[0]:
        return None
    gid = _number(fields[2])
    if gid is None:
        return None
    members = frozenset(m.strip() for m in fields[3].split(",") if m.strip())
    return GroupEntry(fields[0], gid, members)


def parse_shadow(value: bytes) -> ShadowEntry | None:
    fields = _text(value).split(":")
    if len(fields) < 2 or not fields[0]:
        return None
    fields += [""] * (9 - len(fields))
    return ShadowEntry(
        fields[0], fields[1], _number(fields[2]), _number(fields[4]), _number(fields[7])
    )

"""The NIS (YP version 2) procedures the broker uses, over ``oncrpc``.

YPPROC_MATCH fetches one entry by key; YPPROC_ALL streams a whole map in one reply
(the group map, to learn a user's memberships: NIS has no index by member). Each entry
of that stream is ``ypresp_key_val``, whose value comes *before* its key on the wire,
as every ypserv sends it (Sun's own .x file listed them the other way round).
"""

from __future__ import annotations

from enum import IntEnum

from deskbroker.identity.oncrpc import Connection, Packer, RpcError

YPPROG = 100004
YPVERS = 2
YPPROC_DOMAIN = 1
YPPROC_MATCH = 3
YPPROC_ALL = 8

MAX_NAME = 64  # YPMAXDOMAIN, YPMAXMAP
MAX_RECORD = 1024  # YPMAXRECORD: the longest key or value
MAX_MAP_BYTES = 64 << 20  # a whole map read by YPPROC_ALL


class YpStatus(IntEnum):
    TRUE = 1
    NOMORE = 2
    FALSE = 0
    NOMAP = -1
    NODOM = -2
    NOKEY = -3
    BADOP = -4
    BADDB = -5
    YPERR = -6
    BADARGS = -7
    VERS = -8


class YpError(RpcError):
    """ypserv answered with a status other than success (or no such key)."""

    def __init__(self, status: YpStatus, what: str) -> None:
        super().__init__(f"{what}: {status.name}")
        self.status = status


def _status(value: int) -> YpStatus:
    try:
        return YpStatus(value)
    except ValueError:
        return YpStatus.YPERR


def match(conn: Connection, domain: str, map_name: str, key: bytes) -> bytes | None:
    """YPPROC_MATCH: the value of ``key`` in ``map_name``, or None when there is none."""
    args = Packer().string(domain).string(map_name).opaque(key).data()
    reply = conn.call(YPPROG, YPVERS, YPPROC_MATCH, args, limit=4 * MAX_RECORD)
    status = _status(reply.int32())
    value = reply.opaque()
    if status is YpStatus.NOKEY:
        return None
    if status is not YpStatus.TRUE:
        raise YpError(status, f"{map_name} in {domain}")
    return value


def all_entries(conn: Connection, domain: str, map_name: str) -> list[tuple[bytes, bytes]]:
    """YPPROC_ALL: every (key, value) of ``map_name``."""
    args = Packer().string(domain).string(map_name).data()
    reply = conn.call(YPPROG, YPVERS, YPPROC_ALL, args, limit=MAX_MAP_BYTES)
    entries: list[tuple[bytes, bytes]] = []
    while reply.boolean():  # "more"
        status = _status(reply.int32())
        if status is YpStatus.NOMORE:
            break
        if status is not YpStatus.TRUE:
            raise YpError(status, f"{map_name} in {domain}")
        value = reply.opaque()
        key = reply.opaque()
        entries.append((key, value))
    return entries

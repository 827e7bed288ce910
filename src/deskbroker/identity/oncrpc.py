"""A small ONC RPC client (RFC 5531) over TCP, with the XDR (RFC 4506) it needs.

Enough for the NIS protocol and the portmapper: AUTH_NONE calls, record marking,
replies read whole (a YPPROC_ALL answer is one reply of many fragments). Every socket
operation has a timeout. Calls may come from a reserved source port (below 1024),
which ypserv demands before it hands out ``shadow.byname``.
"""

from __future__ import annotations

import errno
import random
import socket
import struct
import threading
from dataclasses import dataclass

from deskbroker import outbound

PMAP_PROG = 100000
PMAP_VERS = 2
PMAPPROC_GETPORT = 3
IPPROTO_TCP = 6

_CALL, _REPLY = 0, 1
_MSG_ACCEPTED = 0
_ACCEPT_ERRORS = {
    1: "program unavailable",
    2: "program version mismatch",
    3: "procedure unavailable",
    4: "garbage arguments",
    5: "system error",
}
_LAST_FRAGMENT = 0x80000000
_RESERVED_PORTS = range(600, 1024)


class RpcError(Exception):
    """The server answered, but not with a result (a protocol or server-side error)."""


class RpcUnreachable(RpcError):
    """No answer: the connection was refused, timed out or broke."""


class ReservedPortDenied(RpcError):
    """This process may not bind a source port below 1024."""


class XdrError(RpcError):
    """A reply that does not decode as the XDR it should be."""


class Packer:
    """Builds XDR: big-endian 32-bit words, opaque data padded to four bytes."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def uint(self, value: int) -> Packer:
        self._parts.append(struct.pack(">I", value))
        return self

    def opaque(self, data: bytes) -> Packer:
        self.uint(len(data))
        self._parts.append(data + b"\0" * (-len(data) % 4))
        return self

    def string(self, text: str) -> Packer:
        return self.opaque(text.encode())

    def data(self) -> bytes:
        return b"".join(self._parts)


class Unpacker:
    """Reads XDR from a byte string; running past its end raises ``XdrError``."""

    def __init__(self, data: bytes, limit: int = 1 << 20) -> None:
        self._data = data
        self._pos = 0
        self._limit = limit  # the largest opaque accepted

    def uint(self) -> int:
        if self._pos + 4 > len(self._data):
            raise XdrError("the reply ends early")
        (value,) = struct.unpack_from(">I", self._data, self._pos)
        self._pos += 4
        return int(value)

    def int32(self) -> int:
        value = self.uint()
        return value - (1 << 32) if value & 0x80000000 else value

    def boolean(self) -> bool:
        return self.uint() != 0

    def opaque(self) -> bytes:
        size = self.uint()
        if size > self._limit or self._pos + size > len(self._data):
            raise XdrError(f"an opaque of {size} bytes does not fit the reply")
        value = self._data[self._pos : self._pos + size]
        self._pos += size + (-size % 4)
        return value

    def done(self) -> bool:
        return self._pos >= len(self._data)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_xid_lock = threading.Lock()
_xid = random.SystemRandom().getrandbits(32)


def _next_xid() -> int:
    global _xid
    with _xid_lock:
        _xid = (_xid + 1) & 0xFFFFFFFF
        return _xid


def _bind_reserved(sock: socket.socket, family: int) -> None:
    ports = list(_RESERVED_PORTS)
    random.shuffle(ports)
    anywhere = "::" if family == socket.AF_INET6 else "0.0.0.0"
    for port in ports:
        try:
            sock.bind((anywhere, port))
            return
        except PermissionError as exc:
            raise ReservedPortDenied("binding a port below 1024 is not permitted") from exc
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    raise RpcUnreachable("every reserved source port is in use")


class Connection:
    """One TCP connection to an RPC server; calls on it are sequential."""

    def __init__(
        self, endpoint: Endpoint, *, timeout_s: float, connect_timeout_s: float, reserved: bool
    ) -> None:
        self.endpoint = endpoint
        self._timeout_s = timeout_s
        try:
            infos = socket.getaddrinfo(
                endpoint.host, endpoint.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except OSError as exc:
            raise RpcUnreachable(f"{endpoint}: {exc}") from exc
        family, kind, proto, _, address = infos[0]
        # The very address connected to below: no second lookup can differ.
        reason = outbound.current().refusal(str(address[0]))
        if reason is not None:
            raise RpcUnreachable(f"{endpoint}: {reason}")
        sock = socket.socket(family, kind, proto)
        try:
            if reserved:
                _bind_reserved(sock, family)
            sock.settimeout(connect_timeout_s)
            sock.connect(address)
            sock.settimeout(timeout_s)
        except RpcError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            raise RpcUnreachable(f"{endpoint}: {exc}") from exc
        self._sock = sock

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def call(self, prog: int, vers: int, proc: int, args: bytes, *, limit: int) -> Unpacker:
        """Send one call and return an unpacker positioned at the procedure's result.

        ``limit`` bounds the reply's size, so a misbehaving server cannot exhaust memory.
        """
        xid = _next_xid()
        header = Packer().uint(xid).uint(_CALL).uint(2).uint(prog).uint(vers).uint(proc)
        header.uint(0).uint(0).uint(0).uint(0)  # AUTH_NONE credential and verifier
        message = header.data() + args
        try:
            self._sock.sendall(struct.pack(">I", _LAST_FRAGMENT | len(message)) + message)
            reply = self._read_record(limit)
        except TimeoutError as exc:
            raise RpcUnreachable(f"{self.endpoint}: no answer within {self._timeout_s} s") from exc
        except OSError as exc:
            raise RpcUnreachable(f"{self.endpoint}: {exc}") from exc
        return _accepted(reply, xid, self.endpoint)

    def _read_record(self, limit: int) -> bytes:
        fragments: list[bytes] = []
        size = 0
        while True:
            (mark,) = struct.unpack(">I", self._read_exactly(4))
            length = mark & ~_LAST_FRAGMENT
            size += length
            if size > limit:
                raise RpcError(f"{self.endpoint}: the reply exceeds {limit} bytes")
            fragments.append(self._read_exactly(length))
            if mark & _LAST_FRAGMENT:
                return b"".join(fragments)

    def _read_exactly(self, count: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < count:
            chunk = self._sock.recv(min(count - len(chunks), 1 << 16))
            if not chunk:
                raise RpcUnreachable(f"{self.endpoint}: the server closed the connection")
            chunks += chunk
        return bytes(chunks)


def _accepted(reply: bytes, xid: int, endpoint: Endpoint) -> Unpacker:
    u = Unpacker(reply, limit=len(reply))
    if u.uint() != xid or u.uint() != _REPLY:
        raise XdrError(f"{endpoint}: a reply to another call")
    if u.uint() != _MSG_ACCEPTED:
        raise RpcError(f"{endpoint}: the call was denied (RPC version or authentication)")
    u.uint()  # verifier flavour
    u.opaque()  # verifier body
    status = u.uint()
    if status != 0:
        raise RpcError(f"{endpoint}: {_ACCEPT_ERRORS.get(status, f'accept status {status}')}")
    return u


def portmapper_getport(
    host: str, prog: int, vers: int, *, port: int, timeout_s: float, connect_timeout_s: float
) -> int:
    """The TCP port the portmapper on ``host`` has for ``prog``/``vers``; 0 if none."""
    args = Packer().uint(prog).uint(vers).uint(IPPROTO_TCP).uint(0).data()
    with Connection(
        Endpoint(host, port),
        timeout_s=timeout_s,
        connect_timeout_s=connect_timeout_s,
        reserved=False,
    ) as conn:
        return conn.call(PMAP_PROG, PMAP_VERS, PMAPPROC_GETPORT, args, limit=64).uint()

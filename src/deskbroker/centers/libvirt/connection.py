"""One shared libvirt connection per center, every call under a whole-call deadline.

libvirt's calls are blocking C calls: a host that stops answering holds the calling
thread until libvirt's keepalive gives up (or for ever on a local socket). So each call
runs on a capped helper thread (``Helpers``, the pattern of the OpenStack driver) that
the caller waits for at most ``timeout_s``; a helper given up on ends when libvirt does,
which for a host that accepts and never answers is never. So, as for the clouds, one
tenant's calls hold at most ``MAX_PER_OWNER`` of the helpers: a tenant administrator's
silent hosts cannot leave another tenant's libvirt calls without one.

The connection is opened lazily, once, and kept for the process: libvirt connections
are thread-safe, so every driver of one URI and one set of credentials shares one (the
engine's, the API's and the plans' caches each open a driver). It matters for libvirt's
test driver too, whose whole state lives in the connection that loaded it. A connection
libvirt reports dead is dropped and opened again on the next call.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import libvirt

from deskbroker import outbound
from deskbroker.centers.libvirt.params import LibvirtParams
from deskbroker.centers.openstack.overdue import MAX_PER_OWNER, Helpers, NoHelperLeft, Overdue
from deskbroker.errors import CenterError, unanswered

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Helper threads for libvirt calls in one process (running, or given up on and not ended):
#: their own places, so a hung libvirt host cannot take a cloud's; one tenant's calls hold
#: at most ``MAX_PER_OWNER`` of them.
LIBVIRT_CALLS = Helpers(32, MAX_PER_OWNER, "libvirt hosts")

# libvirt prints every error on stderr by default; the driver reports them itself.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

# Errors after which the connection is not trusted any more.
_CONNECTION_LOST = frozenset(
    {libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_NO_CONNECT}
)


def code(exc: libvirt.libvirtError) -> int:
    """libvirt's error number of ``exc``."""
    return int(exc.get_error_code() or 0)


def words(exc: libvirt.libvirtError) -> str:
    """libvirt's message, on one line and short (it names objects, never credentials)."""
    return " ".join(str(exc.get_error_message() or exc).split())[:300]


class _Link:
    """One process-wide connection to a URI with one set of credentials."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: libvirt.virConnect | None = None


_links: dict[tuple[str, str, str], _Link] = {}
_links_lock = threading.Lock()


class Hypervisor:
    """The connection to one libvirt host and the deadline around each call."""

    def __init__(self, params: LibvirtParams, secrets: Mapping[str, str]) -> None:
        self.params = params
        self._password = secrets.get("password", "")
        # Connections are shared by URI and credentials (a digest: the key is no secret).
        digest = hashlib.sha256(self._password.encode()).hexdigest()
        self._key = (params.uri, params.username or "", digest)
        self.calls = 0
        # The tenant whose center this is (the driver's ``belongs_to``): its calls count
        # against its share of the helpers. Empty only outside the broker's driver cache.
        self.owner = ""

    def _link(self) -> _Link:
        with _links_lock:
            return _links.setdefault(self._key, _Link())

    def _check_outbound(self) -> list[str]:
        """Every address the host name resolves to must pass the outbound policy:
        libvirt opens its own socket, so the broker checks before it connects. Returns
        the addresses checked (none for the broker host's own hypervisor)."""
        host = self.params.host
        if not host:
            return []
        try:
            found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise CenterError(f"libvirt host {host} does not resolve: {exc}") from exc
        policy = outbound.current()
        addresses = [str(target[0]) for *_, target in found]
        for address in addresses:
            policy.check_address(address, f"libvirt host {host}")
        return addresses

    def _uri_to_open(self, checked: list[str]) -> str:
        """The URI libvirt opens: a ``+tcp`` URI names the address just checked, so
        libvirt does not resolve the name again and reach whatever it points to a moment
        later (DNS rebinding). SASL credentials do not keep the name: libvirt uses them
        only when the host asks, and a host that asks for nothing is just what a rebinding
        would aim at. A SASL mechanism that authenticates the host by its name (GSSAPI)
        goes over ``+tls``, a URI only a global administrator may write, which keeps it."""
        parts = urlsplit(self.params.uri)
        if not checked or not self.params.uri.split("://")[0].endswith("+tcp"):
            return self.params.uri
        try:
            ipaddress.ip_address(parts.hostname or "")
            return self.params.uri  # an address already: nothing to resolve
        except ValueError:
            pass
        address = checked[0]
        shown = f"[{address}]" if ":" in address else address
        host = shown if parts.port is None else f"{shown}:{parts.port}"
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit(parts._replace(netloc=user + host))

    def _open(self) -> libvirt.virConnect:
        uri = self._uri_to_open(self._check_outbound())
        username = self.params.username or ""
        password = self._password

        def answer(credentials: list[list[Any]], _data: object) -> int:
            # libvirt asks for what its SASL mechanism needs; answer only what we hold.
            for credential in credentials:
                if credential[0] == libvirt.VIR_CRED_AUTHNAME:
                    credential[4] = username
                elif credential[0] == libvirt.VIR_CRED_PASSPHRASE:
                    credential[4] = password
                else:
                    return -1
            return 0

        auth = [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], answer, None]
        try:
            conn = libvirt.openAuth(uri, auth, 0)
        except libvirt.libvirtError as exc:
            raise CenterError(f"cannot connect to {self.params.uri}: {words(exc)}") from exc
        if conn is None:
            raise CenterError(f"cannot connect to {self.params.uri}")
        return conn

    def connection(self) -> libvirt.virConnect:
        """The shared connection, opened on first use or after it was lost."""
        link = self._link()
        with link.lock:
            conn = link.conn
            if conn is not None:
                try:
                    alive = conn.isAlive() == 1
                except libvirt.libvirtError:
                    alive = False
                if alive:
                    return conn
                link.conn = None
            link.conn = self._open()
            return link.conn

    def call(self, work: Callable[[libvirt.virConnect], T], what: str) -> T:
        """``work(connection)`` on a helper thread, given up on after ``timeout_s``
        (connecting included). libvirt errors become ``CenterError`` naming ``what``;
        the broker's own errors raised by ``work`` pass as they are."""
        self.calls += 1
        deadline = time.monotonic() + self.params.timeout_s

        def run() -> T:
            return work(self.connection())

        try:
            return LIBVIRT_CALLS.run(
                run, deadline - time.monotonic(), "libvirt-call", owner=self.owner
            )
        except Overdue:
            raise unanswered(
                CenterError(
                    f"{what}: libvirt at {self.params.uri} did not answer within "
                    f"{self.params.timeout_s:g} s"
                )
            ) from None
        except NoHelperLeft as exc:
            raise CenterError(
                f"{what}: not asked, since {exc}; the broker waits for them to end first"
            ) from None
        except ValueError as exc:
            # XML libvirt returned that the broker will not read (domxml refuses a DTD).
            raise CenterError(f"{what}: {exc}") from exc
        except libvirt.libvirtError as exc:
            number = code(exc)
            if number in _CONNECTION_LOST:
                link = self._link()
                with link.lock:
                    link.conn = None
            log.warning("%s: libvirt error %s: %s", what, number, words(exc))
            raise CenterError(f"{what}: {words(exc)}") from exc

    def close(self) -> None:
        """Close the shared connection (a test's clean-up; the broker keeps it for the
        process). A later call opens it again."""
        with _links_lock:
            link = _links.pop(self._key, None)
        if link is None:
            return
        with link.lock:
            conn, link.conn = link.conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

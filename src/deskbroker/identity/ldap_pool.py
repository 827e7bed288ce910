"""Connections to one directory: failover over its servers and a small pool of each kind.

ldap3's own ``ServerPool`` is not used: its availability state lives per connection (a
fresh connection probes a dead server again) and an exhausted cycle sleeps ten seconds
before giving up. Here a server that failed to open is skipped for
``dead_server_retry_s`` by every connection of the source, and when every server is
down the caller hears so at once.

Two pools are kept: connections bound as the service account (searches) and
connections used for the users' own binds (whose identity after a bind does not matter,
because nothing else runs on them).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ldap3 import NONE, SYNC, Connection, Server, Tls
from ldap3.core.exceptions import (
    LDAPCommunicationError,
    LDAPException,
    LDAPStartTLSError,
)

from deskbroker import outbound
from deskbroker.errors import DirectoryUnavailable
from deskbroker.identity.ldap_params import LdapParams
from deskbroker.outbound import OutboundRefused

log = logging.getLogger("deskbroker.identity.ldap")
T = TypeVar("T")

UNREACHABLE = (
    "The directory is unreachable, so your password cannot be checked; try again in a few "
    "minutes, and tell your administrator if it persists."
)


@dataclass
class _Server:
    url: str
    dead_until: float = 0.0


def close_quietly(conn: Connection) -> None:
    with contextlib.suppress(LDAPException, OSError):
        conn.unbind()


def _check_resolved(server: Server, what: str) -> None:
    """Resolve the server's name now and refuse it when any address is on a network the
    outbound policy denies. ldap3 keeps these addresses on ``server`` and connects to
    them in the ``open`` that follows (it resolves again only minutes later), so the
    address checked is the address reached, before a TLS handshake sends anything."""
    policy = outbound.current()
    for family, _type, _proto, _name, sockaddr, *_availability in server.address_info:
        if family in (socket.AF_INET, socket.AF_INET6):
            policy.check_address(str(sockaddr[0]), what)


class Directory:
    """The servers of one identity source, in failover order, and its idle connections."""

    def __init__(self, params: LdapParams) -> None:
        self.params = params
        self._tls = Tls(
            validate=ssl.CERT_REQUIRED if params.verify_tls else ssl.CERT_NONE,
            ca_certs_file=params.ca_file,
        )
        self._servers = [_Server(url) for url in params.servers]
        self._turn = 0
        self._lock = threading.Lock()
        self._idle: dict[str, list[Connection]] = {}
        self._closed = False

    def _order(self) -> list[_Server]:
        """Live servers first (from the first, or in turn), then the dead as a last resort."""
        with self._lock:
            start = self._turn
            if self.params.server_order == "round_robin":
                self._turn = (self._turn + 1) % len(self._servers)
        ordered = self._servers[start:] + self._servers[:start]
        now = time.monotonic()
        return [s for s in ordered if s.dead_until <= now] + [
            s for s in ordered if s.dead_until > now
        ]

    def _server(self, url: str) -> Server:
        """A fresh ldap3 server, so that its name is resolved anew on each open (and
        checked, see ``_check_resolved``) instead of from an earlier lookup."""
        return Server(
            url,
            use_ssl=url.lower().startswith("ldaps://"),
            tls=self._tls,
            get_info=NONE,
            connect_timeout=self.params.connect_timeout_s,
        )

    def open(self) -> Connection:
        """A connection to the first server that answers (TLS set up, not yet bound)."""
        failures: list[str] = []
        for entry in self._order():
            server = self._server(entry.url)
            conn = Connection(
                server,
                client_strategy=SYNC,
                auto_referrals=False,
                raise_exceptions=False,
                read_only=True,
                receive_timeout=int(max(1, self.params.timeout_s)),
            )
            try:
                # Before any byte is sent (an ldaps:// open sends the TLS ClientHello).
                _check_resolved(server, entry.url)
                conn.open()
                # Before any bind sends a password: the address the socket reached.
                outbound.current().check_socket(conn.socket, entry.url)
                if self.params.start_tls and not server.ssl:
                    conn.start_tls()
            except (LDAPCommunicationError, LDAPStartTLSError, OSError, OutboundRefused) as exc:
                close_quietly(conn)
                entry.dead_until = time.monotonic() + self.params.dead_server_retry_s
                failures.append(f"{entry.url}: {exc}")
                continue
            entry.dead_until = 0.0
            return conn
        log.warning("no directory server answered: %s", "; ".join(failures))
        raise DirectoryUnavailable(UNREACHABLE, reason="unreachable")

    def run(
        self, kind: str, prepare: Callable[[Connection], None], work: Callable[[Connection], T]
    ) -> T:
        """``work`` on a pooled connection of ``kind`` (``prepare`` readies a new one).

        A pooled connection may have gone stale (an idle timeout, a restarted server):
        on a communication error the work is retried once on a fresh connection, which
        fails over to the next server when this one is gone.
        """
        for attempt in (1, 2):
            conn = self._take(kind)
            try:
                if conn is None:
                    conn = self.open()
                    prepare(conn)
                result = work(conn)
            except LDAPCommunicationError as exc:
                if conn is not None:
                    close_quietly(conn)
                if attempt == 2:
                    log.warning("directory connection failed twice: %s", exc)
                    raise DirectoryUnavailable(UNREACHABLE, reason="unreachable") from exc
                continue
            except BaseException:
                if conn is not None:
                    close_quietly(conn)
                raise
            self._give(kind, conn)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _take(self, kind: str) -> Connection | None:
        with self._lock:
            idle = self._idle.get(kind)
            return idle.pop() if idle else None

    def _give(self, kind: str, conn: Connection) -> None:
        with self._lock:
            idle = self._idle.setdefault(kind, [])
            if not self._closed and len(idle) < self.params.pool_size and not conn.closed:
                idle.append(conn)
                return
        close_quietly(conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [c for conns in self._idle.values() for c in conns]
            self._idle.clear()
        for conn in idle:
            close_quietly(conn)

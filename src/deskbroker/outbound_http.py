"""The outbound policy on HTTP connections: requests (openstacksdk, keystoneauth) and
httpx (OpenID providers). Each new connection is checked against the address its socket
reached, before TLS and before the request is sent, so a name that resolves to a denied
address, or a redirect or catalog entry that points at one, is refused the same way.

Connections through a proxy from the environment reach the proxy, not the target: the
proxy is then where outbound traffic is policed.
"""

from __future__ import annotations

import socket
from typing import Any

import httpcore
import httpx
import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from deskbroker import outbound


class _GuardedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        outbound.current().check_socket(sock, f"connecting to {self.host}:{self.port}")
        return sock


class _GuardedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        outbound.current().check_socket(sock, f"connecting to {self.host}:{self.port}")
        return sock


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


def guard_requests(session: requests.Session) -> None:
    """Check every direct connection ``session`` opens (its mounted adapters keep their
    own settings, such as keystoneauth's TCP keep-alive)."""
    for adapter in session.adapters.values():
        if isinstance(adapter, HTTPAdapter):
            adapter.poolmanager.pool_classes_by_scheme = {
                "http": _GuardedHTTPPool,
                "https": _GuardedHTTPSPool,
            }


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's network backend, with the policy checked on each new TCP connection."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        sock = stream.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            try:
                outbound.current().check_socket(sock, f"connecting to {host}:{port}")
            except outbound.OutboundRefused:
                stream.close()
                raise
        return stream

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        return self._inner.connect_unix_socket(path, timeout, socket_options)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def guarded_transport(**options: Any) -> httpx.HTTPTransport:
    """An ``httpx.HTTPTransport`` (same options) whose direct connections are checked."""
    transport = httpx.HTTPTransport(**options)
    # httpx offers no public way to choose the network backend; its pool takes one.
    pool = transport._pool
    if isinstance(pool, httpcore.ConnectionPool):
        pool._network_backend = _GuardedBackend(pool._network_backend)
    return transport

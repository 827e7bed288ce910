"""The outbound policy on HTTP connections: requests (openstacksdk, keystoneauth) and
httpx (OpenID providers). Each new connection is checked against the address its socket
reached, before TLS and before the request is sent, so a name that resolves to a denied
address, or a redirect or catalog entry that points at one, is refused the same way.

Connections through a proxy from the environment reach the proxy, not the target: the
proxy is then where outbound traffic is policed.

An httpx call made inside ``deadline()`` keeps to it on every connection of a guarded
transport: a whole-call deadline, not only httpx's per-read timeouts.
"""

from __future__ import annotations

import contextvars
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


# When the call running in this context must be over (time.monotonic()), if it has one.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "outbound_http_deadline", default=None
)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Within the block, every connect, send and read of a guarded httpx transport ends
    by ``seconds`` from now, or fails as a timeout (its connection closed). Each read is
    bounded by the time left, so a peer that drips its answer a byte at a time, which
    beats every per-read timeout, is given up on at the deadline all the same."""
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _left(timeout: float | None, overdue: type[httpcore.TimeoutException]) -> float | None:
    """The timeout of one network operation, cut to the time the deadline leaves."""
    end = _DEADLINE.get()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise overdue("the deadline of the whole call passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation keeps to the deadline of the call using it."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


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
        timeout = _left(timeout, httpcore.ConnectTimeout)
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        sock = stream.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            try:
                outbound.current().check_socket(sock, f"connecting to {host}:{port}")
            except outbound.OutboundRefused:
                stream.close()
                raise
        return _DeadlineStream(stream)

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

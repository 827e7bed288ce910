"""The ypservs of one NIS source: failover in order, ports from the portmapper.

A server that does not answer (or does not serve the domain or map) is skipped by
every login for ``dead_server_retry_s``; when all are down the caller hears so at once,
in words. A server named without a port is looked up in its portmapper (rpcbind), and
the answer is kept until that port stops answering, since ypserv may restart elsewhere.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from deskbroker.errors import DirectoryUnavailable
from deskbroker.identity.nis_params import NisParams, split_server
from deskbroker.identity.oncrpc import (
    Connection,
    Endpoint,
    ReservedPortDenied,
    RpcError,
    RpcUnreachable,
    portmapper_getport,
)
from deskbroker.identity.yp import YPPROG, YPVERS, YpError

log = logging.getLogger("deskbroker.identity.nis")
T = TypeVar("T")

UNREACHABLE = (
    "The NIS servers are unreachable, so your password cannot be checked; try again in a "
    "few minutes, and tell your administrator if it persists."
)
NOT_SERVED = (
    "The NIS servers do not serve this identity source's domain or maps; ask your "
    "administrator to check its domain and map names."
)
SHADOW_DENIED = (
    "The NIS server keeps password hashes in a map it gives only to privileged ports, which "
    "this broker may not use; ask your administrator (the operator's guide, NIS section)."
)


@dataclass
class _Server:
    spec: str
    host: str
    port: int | None
    found_port: int | None = None
    dead_until: float = 0.0


class NisServers:
    """The servers of one source, in failover order."""

    def __init__(self, params: NisParams) -> None:
        self.params = params
        self._servers = [_Server(spec, *split_server(spec)) for spec in params.servers]
        self._lock = threading.Lock()

    def _order(self) -> list[_Server]:
        """Live servers in the configured order, then the dead as a last resort."""
        now = time.monotonic()
        return [s for s in self._servers if s.dead_until <= now] + [
            s for s in self._servers if s.dead_until > now
        ]

    def _endpoint(self, server: _Server) -> Endpoint:
        port = server.port or server.found_port
        if port is None:
            port = portmapper_getport(
                server.host,
                YPPROG,
                YPVERS,
                port=self.params.portmapper_port,
                timeout_s=self.params.timeout_s,
                connect_timeout_s=self.params.connect_timeout_s,
            )
            if port == 0:
                raise RpcUnreachable(f"the portmapper of {server.host} knows no ypserv")
            with self._lock:
                server.found_port = port
        return Endpoint(server.host, port)

    def run(self, work: Callable[[Connection], T], *, reserved: bool = False) -> T:
        """``work`` on a connection to the first server that answers it.

        ``reserved`` calls from a source port below 1024 (for the shadow map)."""
        failures: list[str] = []
        not_served = False
        for server in self._order():
            try:
                with Connection(
                    self._endpoint(server),
                    timeout_s=self.params.timeout_s,
                    connect_timeout_s=self.params.connect_timeout_s,
                    reserved=reserved,
                ) as conn:
                    result = work(conn)
            except ReservedPortDenied as exc:
                log.warning("cannot bind a reserved port for %s: %s", server.spec, exc)
                raise DirectoryUnavailable(SHADOW_DENIED, reason="shadow_denied") from exc
            except YpError as exc:
                # NODOM, NOMAP, BADDB...: another server may serve the domain and maps.
                not_served = True
                self._failed(server, failures, str(exc), forget_port=False)
                continue
            except RpcError as exc:
                self._failed(server, failures, str(exc), forget_port=True)
                continue
            server.dead_until = 0.0
            return result
        log.warning("no NIS server answered: %s", "; ".join(failures))
        if not_served:
            raise DirectoryUnavailable(NOT_SERVED, reason="not_served")
        raise DirectoryUnavailable(UNREACHABLE, reason="unreachable")

    def _failed(self, server: _Server, failures: list[str], why: str, *, forget_port: bool) -> None:
        with self._lock:
            server.dead_until = time.monotonic() + self.params.dead_server_retry_s
            if forget_port:
                server.found_port = None
        failures.append(f"{server.spec}: {why}")

"""Floating IP DNAT: connections to a floating address reach the instance's fixed address."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        # Half-close so the other direction can finish, as a NAT would pass the FIN on.
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


class _Pair:
    """Both directions of one relayed connection; the last one to finish closes it."""

    def __init__(
        self, client: socket.socket, upstream: socket.socket, forget: Callable[..., None]
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.forget = forget
        self.left = 2
        self.lock = threading.Lock()

    def relay(self, src: socket.socket, dst: socket.socket) -> None:
        _pump(src, dst)
        with self.lock:
            self.left -= 1
            last = self.left == 0
        if last:
            self.client.close()
            self.upstream.close()
            self.forget(self.client, self.upstream)


class _Listener:
    """Accepts on floating:port and relays each connection to fixed:port."""

    def __init__(self, floating: str, fixed: str, port: int) -> None:
        self.fixed = fixed
        self.port = port
        self.sock = socket.create_server((floating, port))
        self.sock.settimeout(0.5)
        self.closed = threading.Event()
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.thread = threading.Thread(
            target=self._accept, name=f"cloudsim-nat-{floating}", daemon=True
        )
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection((self.fixed, self.port), timeout=5)
            except OSError:
                # Nothing listens behind the floating IP: refuse like the instance would.
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            pair = _Pair(client, upstream, self._forget)
            with self.lock:
                self.open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=pair.relay, args=(src, dst), daemon=True).start()

    def _forget(self, *sockets: socket.socket) -> None:
        with self.lock:
            self.open.difference_update(sockets)

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with self.lock:
            sockets = list(self.open)
            self.open.clear()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.thread.join(timeout=2)


class PortForwarder:
    """Relays the given TCP ports of every associated floating IP to its fixed IP.

    Neutron does this with DNAT in a router namespace; here a small relay per association
    lets a client reach an instance's desktop through its floating address.
    """

    def __init__(self, ports: list[int]) -> None:
        self.ports = list(ports)
        self._maps: dict[str, list[_Listener]] = {}
        self._lock = threading.Lock()

    def __call__(self, floating: str, fixed: str | None) -> None:
        """Associate ``floating`` with ``fixed`` (None removes the association)."""
        self.unmap(floating)
        if fixed is None:
            return
        listeners = []
        for port in self.ports:
            try:
                listeners.append(_Listener(floating, fixed, port))
            except OSError:
                log.warning("cannot forward %s:%s to %s", floating, port, fixed, exc_info=True)
        with self._lock:
            self._maps[floating] = listeners

    def unmap(self, floating: str) -> None:
        """Stop forwarding a floating address."""
        with self._lock:
            listeners = self._maps.pop(floating, [])
        for listener in listeners:
            listener.close()

    def mappings(self) -> dict[str, str]:
        """Floating → fixed addresses currently forwarded."""
        with self._lock:
            return {f: ls[0].fixed for f, ls in self._maps.items() if ls}

    def close(self) -> None:
        """Stop every forwarder."""
        with self._lock:
            floating = list(self._maps)
        for address in floating:
            self.unmap(address)

"""Peers that never answer properly, on 127.0.0.1, for the tests of deadlines and bounds.

- ``tarpit()``: a listener that accepts every connection and never answers, as a
  directory, provider or cloud does when its process hangs or a firewall swallows the
  replies. The worst a network peer can do to the broker short of lying: every call to
  it hangs until the caller's own deadline (or for ever, without one).
- ``drip()``: a listener that answers every connection one byte a second, for ever. Each
  read of a client succeeds before its timeout, so only a deadline on the whole call
  gives up on it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.helpers import Api

# An HTTP answer that never ends: a large body announced, then dripped.
HTTP_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"
# An LDAP message header announcing a long message (BER SEQUENCE, long length).
LDAP_HEAD = b"\x30\x84\x00\x0f\x42\x40"


class Tarpit:
    """A listener that accepts and stays silent; ``close`` lets go of everyone it holds."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        # Room for a storm of logins connecting at once (the identity tests send 45).
        self._listener.listen(256)
        self.port: int = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="tarpit", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def accepted(self) -> int:
        """Connections taken in (and left hanging) so far."""
        with self._lock:
            return len(self._held)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self._held.append(conn)

    def close(self) -> None:
        """Stop listening and drop every held connection: whoever hangs on one is let go."""
        # Wakes the accept() below (a plain close from another thread would not).
        with contextlib.suppress(OSError):  # closed before
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)
        with self._lock:
            for conn in self._held:
                with contextlib.suppress(OSError):  # the caller gave up first
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._held.clear()


@contextmanager
def tarpit() -> Iterator[Tarpit]:
    pit = Tarpit()
    try:
        yield pit
    finally:
        pit.close()


@contextmanager
def serving(handle: Callable[[socket.socket, threading.Event], None]) -> Iterator[int]:
    """The port of a listener that hands each connection to ``handle`` (with the event
    set once the block ends, for handlers that loop) on a thread of its own; all are
    closed when the block ends."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    listener.settimeout(0.1)
    stopping = threading.Event()
    conns: list[socket.socket] = []

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conns.append(conn)
            threading.Thread(target=handle, args=(conn, stopping), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stopping.set()
        thread.join(timeout=5)
        listener.close()
        for conn in conns:
            conn.close()


def dripping(
    conn: socket.socket, stopping: threading.Event, head: bytes, filler: bytes, interval_s: float
) -> None:
    """Send ``head`` then ``filler`` for ever on ``conn``, one byte per ``interval_s``."""
    sent = 0
    while not stopping.wait(0 if sent == 0 else interval_s):
        byte = head[sent : sent + 1] if sent < len(head) else filler
        try:
            conn.sendall(byte)
        except OSError:
            return
        sent += 1


@contextmanager
def drip(head: bytes, filler: bytes = b" ", interval_s: float = 1.0) -> Iterator[int]:
    """The port of a listener that sends ``head`` then ``filler`` for ever, one byte per
    ``interval_s``, on every connection; all are closed when the block ends."""

    def feed(conn: socket.socket, stopping: threading.Event) -> None:
        conn.settimeout(0.05)
        with suppress(TimeoutError, OSError):
            conn.recv(65536)  # the request, whatever it is; never answered properly
        dripping(conn, stopping, head, filler, interval_s)

    with serving(feed) as port:
        yield port


def silent_center(
    api: Api, pit: Tarpit, *, name: str = "silent", timeout_s: float | None = None, **params: Any
) -> dict[str, Any]:
    """An OpenStack center (through the admin API) whose Keystone is ``pit``: every call
    to it waits until its deadline (``timeout_s``, the driver's default when None)."""
    values: dict[str, Any] = {
        "auth_url": f"{pit.url}/v3",
        "project_name": "demo",
        "username": "demo",
        **({"timeout_s": timeout_s} if timeout_s is not None else {}),
        **params,
    }
    center: dict[str, Any] = api.post(
        "centers",
        {
            "name": name,
            "kind": "openstack",
            "params": values,
            "secrets": {"password": "password"},
        },
    )
    return center

"""A slow-drip server: a 127.0.0.1 listener that answers every connection one byte a
second, for ever. Each read of a client succeeds before its timeout, so only a deadline on
the whole call gives up on it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

# An HTTP answer that never ends: a large body announced, then dripped.
HTTP_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"
# An LDAP message header announcing a long message (BER SEQUENCE, long length).
LDAP_HEAD = b"\x30\x84\x00\x0f\x42\x40"


@contextmanager
def drip(head: bytes, filler: bytes = b" ", interval_s: float = 1.0) -> Iterator[int]:
    """The port of a listener that sends ``head`` then ``filler`` for ever, one byte per
    ``interval_s``, on every connection; all are closed when the block ends."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    listener.settimeout(0.1)
    stopping = threading.Event()
    conns: list[socket.socket] = []

    def feed(conn: socket.socket) -> None:
        conn.settimeout(0.05)
        sent = 0
        while not stopping.wait(0 if sent == 0 else interval_s):
            with suppress(TimeoutError, OSError):
                conn.recv(65536)  # the request, whatever it is; never answered properly
            byte = head[sent : sent + 1] if sent < len(head) else filler
            try:
                conn.sendall(byte)
            except OSError:
                return
            sent += 1

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conns.append(conn)
            threading.Thread(target=feed, args=(conn,), daemon=True).start()

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

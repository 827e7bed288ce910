"""DNS rebinding in the tests: a name that resolves to one address and then another
(name resolution is the faked boundary), and a listener standing for the internal
service a rebinding would reach, counting who does."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest


def resolver(monkeypatch: pytest.MonkeyPatch, name: str, answers: list[str]) -> list[str]:
    """``name`` resolves to each of ``answers`` in turn (the last one from then on) for
    the broker's own lookups (Python's); the lookups made are returned as they happen.
    Other names resolve as usual."""
    real = socket.getaddrinfo
    looked: list[str] = []

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return real(host, port, *args, **kwargs)
        looked.append(host)
        return real(answers[min(len(looked), len(answers)) - 1], port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return looked


class Trap:
    """A listener on 127.0.0.1 (``port`` 0: any free one) that counts the connections it
    takes, sends them ``greeting`` and closes them."""

    def __init__(self, port: int = 0, greeting: bytes = b"") -> None:
        self.server = socket.create_server(("127.0.0.1", port))
        self.port = int(self.server.getsockname()[1])
        self.greeting = greeting
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            if self.greeting:
                conn.sendall(self.greeting)
            conn.close()

    def close(self) -> None:
        self.server.close()

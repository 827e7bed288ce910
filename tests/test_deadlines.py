"""Every outbound call has a deadline its client library honours: a directory, provider
or machine that accepts the connection and never answers costs at most that deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from deskbroker.centers.registry import open_driver
from deskbroker.errors import DeskbrokerError
from deskbroker.identity.base import Credentials, source_kinds
from deskbroker.security import PasswordHashing
from tests.tarpit import Tarpit, tarpit

HASHING = PasswordHashing(1, 64, 1)


def _took(call: Callable[[], Any]) -> tuple[float, Exception | None]:
    started = time.monotonic()
    try:
        call()
    except Exception as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


@pytest.fixture
def pit() -> Any:
    with tarpit() as listener:
        yield listener


def test_ldap_gives_up_at_its_timeouts(pit: Tarpit) -> None:
    source = source_kinds()["ldap"](
        {
            "servers": [f"ldap://127.0.0.1:{pit.port}"],
            "base_dn": "dc=example,dc=org",
            "connect_timeout_s": 1,
            "timeout_s": 1,
        },
        {},
        HASHING,
    )
    took, error = _took(lambda: source.authenticate(Credentials("alice", "pw"), None))
    # A stale pooled connection is retried once on a fresh one: two receive timeouts.
    assert isinstance(error, DeskbrokerError) and "unreachable" in error.detail
    assert pit.accepted >= 1 and took < 4.0


def test_nis_gives_up_at_its_timeouts(pit: Tarpit) -> None:
    source = source_kinds()["nis"](
        {
            "domain": "example",
            "servers": [f"127.0.0.1:{pit.port}"],
            "connect_timeout_s": 1,
            "timeout_s": 1,
        },
        {},
        HASHING,
    )
    took, error = _took(lambda: source.authenticate(Credentials("alice", "pw"), None))
    assert isinstance(error, DeskbrokerError) and "unreachable" in error.detail
    assert pit.accepted >= 1 and took < 3.0


def test_an_openid_provider_gives_up_at_its_timeout(pit: Tarpit) -> None:
    source = source_kinds()["oidc"](
        {"issuer": pit.url, "client_id": "deskbroker", "timeout_s": 1}, {}, HASHING
    )
    took, error = _took(source.metadata)  # type: ignore[attr-defined]
    assert isinstance(error, DeskbrokerError)
    assert pit.accepted >= 1 and took < 3.0


def test_a_probe_gives_up_at_its_timeout() -> None:
    """A listener whose backlog is full drops new connection attempts: they hang."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        waiting = []
        for _ in range(4):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
            waiting.append(client)
        try:
            static = open_driver("static", {"machines": []}, {})
            took, error = _took(lambda: static.probe("127.0.0.1", port, timeout_s=0.5))
            outcome = static.probe("127.0.0.1", port, timeout_s=0.5)
        finally:
            for client in waiting:
                client.close()
    assert error is None and took < 2.0
    assert not outcome.reachable and "timed out" in outcome.message

"""Directories on a network the outbound policy denies: refused when the broker connects,
before a bind sends a password; the real slapd and ypserv of the suite answer otherwise."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from deskbroker import outbound
from deskbroker.errors import DirectoryUnavailable
from deskbroker.identity.base import Credentials, IdentitySourceDriver, source_kinds
from deskbroker.security import PasswordHashing
from tests.identity.directories import LDAP_SERVICE_PASSWORD, Slapd
from tests.identity.nis_server import NisSite
from tests.identity.nis_users import nis_params
from tests.identity.sources import ldap_params

PASSWORD = "typed-by-the-user-0042"


@pytest.fixture
def listener() -> Iterator[tuple[int, bytearray]]:
    """A TCP port on loopback that keeps every byte sent to it."""
    received = bytearray()
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(5)

    def keep() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(2)
            while True:
                try:
                    chunk = conn.recv(4096)
                except OSError:
                    return
                if not chunk:
                    return
                received.extend(chunk)

    thread = threading.Thread(target=keep, daemon=True)
    thread.start()
    yield server.getsockname()[1], received
    server.close()
    thread.join(timeout=5)


def _ldap(url: str) -> IdentitySourceDriver:
    params = {
        "servers": [url],
        "base_dn": "dc=example,dc=org",
        "bind_dn": "cn=service,dc=example,dc=org",
        "connect_timeout_s": 2,
        "timeout_s": 2,
        "dead_server_retry_s": 0,
    }
    return source_kinds()["ldap"](params, {"bind_password": PASSWORD}, PasswordHashing(1, 64, 1))


def test_an_ldap_server_on_a_denied_network_never_receives_the_bind(
    listener: tuple[int, bytearray],
) -> None:
    port, received = listener
    outbound.install(outbound.OutboundPolicy())  # loopback denied, as in production
    driver = _ldap(f"ldap://localhost:{port}")
    with pytest.raises(DirectoryUnavailable):
        driver.authenticate(Credentials("ann", PASSWORD), None)
    driver.close()
    assert PASSWORD.encode() not in received
    assert bytes(received) == b""


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_an_ldaps_server_on_a_denied_network_never_sees_a_client_hello(
    listener: tuple[int, bytearray], host: str
) -> None:
    # ldaps:// starts TLS as it connects: the address is checked before the socket opens,
    # so a denied server sees no connection, not even the ClientHello.
    port, received = listener
    outbound.install(outbound.OutboundPolicy())
    driver = _ldap(f"ldaps://{host}:{port}")
    with pytest.raises(DirectoryUnavailable):
        driver.authenticate(Credentials("ann", PASSWORD), None)
    driver.close()
    assert bytes(received) == b""


def test_an_ldaps_server_on_an_allowed_network_is_sent_the_client_hello(
    listener: tuple[int, bytearray],
) -> None:
    # The control: with loopback allowed, the same listener hears a TLS handshake start.
    port, received = listener
    driver = _ldap(f"ldaps://localhost:{port}")
    with pytest.raises(DirectoryUnavailable):
        driver.authenticate(Credentials("ann", PASSWORD), None)
    driver.close()
    assert received[:1] == b"\x16"  # a TLS handshake record


def test_the_same_server_on_an_allowed_network_gets_the_bind(
    listener: tuple[int, bytearray],
) -> None:
    # The control: with loopback allowed (the suite's policy) the bind does go out, so the
    # test above shows the policy at work and not a listener that hears nothing.
    port, received = listener
    driver = _ldap(f"ldap://localhost:{port}")
    with pytest.raises(DirectoryUnavailable):
        driver.authenticate(Credentials("ann", PASSWORD), None)
    driver.close()
    assert PASSWORD.encode() in received


def test_slapd_behind_a_denied_network_is_refused_and_allowed_again(slapd: Slapd) -> None:
    hashing = PasswordHashing(1, 64, 1)
    secrets = {"bind_password": LDAP_SERVICE_PASSWORD}
    allowed = source_kinds()["ldap"](ldap_params(slapd), secrets, hashing)
    assert allowed.lookup("ann", None) is not None
    allowed.close()
    outbound.install(outbound.OutboundPolicy())
    denied = source_kinds()["ldap"](ldap_params(slapd), secrets, hashing)
    with pytest.raises(DirectoryUnavailable):
        denied.lookup("ann", None)
    denied.close()


def test_a_nis_server_on_a_denied_network_is_refused(nis: NisSite) -> None:
    hashing = PasswordHashing(1, 64, 1)
    assert source_kinds()["nis"](nis_params(nis), {}, hashing).lookup("cid", None) is not None
    outbound.install(outbound.OutboundPolicy())
    with pytest.raises(DirectoryUnavailable):
        source_kinds()["nis"](nis_params(nis), {}, hashing).lookup("cid", None)

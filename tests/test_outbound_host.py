"""The outbound policy refuses the host's own addresses, not only its loopback.

A tenant administrator who writes the broker host's LAN address (what ``hostname -I``
shows) as a static machine's address, a webhook's or a provider's, or a ticket's
desktop, must reach none of the host's services through it: no port scan of the host by
desktop probes, no tunnel into the gateway's host (a guacd listening on every
interface), no blind request. Loopback stays with the settings, as before (the tests'
``outbound_allow`` opens it). Real servers on this machine's addresses; the policy is
also checked on given lists of host addresses, which hold on any machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from deskbroker import outbound, outbound_http
from deskbroker.config import Settings
from deskbroker.errors import InvalidInput
from deskbroker.gateway.settings import GatewaySettings
from deskbroker.outbound import OutboundPolicy, OutboundRefused
from deskbroker.protocols.descriptors import Protocol
from deskbroker.services import gateway as gateway_service
from deskbroker.services.context import BrokerContext
from tests.conftest import LOOPBACK
from tests.gateway_support import GATEWAY_KEY, broker_and_gateway, closed_with, signed_ticket
from tests.helpers import Api, tenant_admin_of

BANNER = b"ALL-INTERFACES SERVICE v1\n"
OWN = "the broker's own host"


def _machine_addresses() -> list[str]:
    """This machine's non-loopback addresses, IPv4 first, found as an operator would
    (``hostname -I``), not by the broker's code; else the address the routes answer from."""
    found: list[str] = []
    try:
        listed = subprocess.run(
            ["hostname", "-I"], capture_output=True, text=True, timeout=10, check=True
        )
        found = listed.stdout.split()
    except (OSError, subprocess.SubprocessError):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect(("198.51.100.1", 9))
                found = [sock.getsockname()[0]]
            except OSError:
                found = []
    addresses = [ipaddress.ip_address(a) for a in found]
    usable = [a for a in addresses if not a.is_loopback and not a.is_link_local]
    return [str(a) for a in sorted(usable, key=lambda a: a.version)]


MACHINE = _machine_addresses()


def _an_address() -> str:
    """The machine's first non-loopback address: every machine the suite runs on has one
    (the tests of the refusal need it; a machine without one fails here, in words)."""
    assert MACHINE, "this machine has no non-loopback address: the host-address tests need one"
    return MACHINE[0]


@dataclass
class Service:
    """A service of the host listening on every interface, as a guacd or sshd may."""

    address: str  # the machine's address it is reached at here
    port: int
    accepted: int = 0


@pytest.fixture
def everywhere() -> Iterator[Service]:
    address = _an_address()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    server = socket.create_server(("", 0), family=family)
    service = Service(address, server.getsockname()[1])

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            service.accepted += 1
            with conn:
                conn.sendall(BANNER)

    threading.Thread(target=serve, daemon=True).start()
    yield service
    server.close()


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


# --- the policy, on given host addresses -------------------------------------------
HOST = frozenset(ipaddress.ip_address(a) for a in ("10.0.0.5", "fd00::5", "127.0.1.1"))


def test_the_hosts_own_addresses_are_refused_in_words() -> None:
    policy = OutboundPolicy.from_text(LOOPBACK, outbound.DEFAULT_DENY, host=HOST)
    for address in ("10.0.0.5", "fd00::5", "::ffff:10.0.0.5"):
        reason = policy.refusal(address)
        assert reason is not None and OWN in reason and "outbound policy" in reason
    # Its neighbours are ordinary addresses.
    assert policy.refusal("10.0.0.6") is None and policy.refusal("fd00::6") is None
    # Written as a number in a saved setting: refused on save, in the same words.
    with pytest.raises(InvalidInput, match="the broker's own host"):
        policy.check_host("10.0.0.5", "machine lab-1")
    with pytest.raises(OutboundRefused, match="the broker's own host"):
        policy.check_address("10.0.0.5", "connecting to lab-1")


def test_loopback_stays_with_the_settings_as_before() -> None:
    # An address of the host on loopback (Debian's 127.0.1.1) is loopback first: the
    # tests' outbound_allow opens it, as it opens every server of the suite.
    opened = OutboundPolicy.from_text(LOOPBACK, outbound.DEFAULT_DENY, host=HOST)
    assert opened.refusal("127.0.1.1") is None and opened.refusal("::1") is None
    assert opened.connection_refusal("127.0.0.1", "127.0.0.1") is None
    # Without it, the deny list refuses loopback in its own words, as before.
    closed = OutboundPolicy(host=HOST)
    reason = closed.refusal("127.0.1.1")
    assert reason is not None and "is in 127.0.0.0/8" in reason and OWN not in reason


def test_only_an_allow_of_exactly_the_address_opens_it() -> None:
    # Allowing the desktops' network does not open the broker host inside it.
    desks = OutboundPolicy.from_text("10.0.0.0/8", "0.0.0.0/0,::/0", host=HOST)
    assert desks.refusal("10.0.0.6") is None
    reason = desks.refusal("10.0.0.5")
    assert reason is not None and OWN in reason
    assert desks.connection_refusal("10.0.0.5", "10.0.0.5") is not None
    # An operator who means it names the address itself; a tie allows, as for the lists.
    exact = OutboundPolicy.from_text("10.0.0.5/32", "0.0.0.0/0", host=HOST)
    assert exact.refusal("10.0.0.5") is None
    assert exact.connection_refusal("10.0.0.5", "10.0.0.5") is None
    # The deny list still governs the rest: fd00::5 is denied by ::/0 and by being ours.
    assert exact.refusal("fd00::5") is not None


def test_azure_wireserver_is_denied_by_default(tmp_path: Any) -> None:
    for policy in (
        OutboundPolicy(host=frozenset()),
        Settings(data_dir=tmp_path).outbound_policy,
        GatewaySettings(key=GATEWAY_KEY).outbound_policy,
    ):
        reason = policy.refusal("168.63.129.16")
        assert reason is not None and "168.63.129.16/32" in reason
        assert policy.refusal("168.63.129.15") is None
        assert policy.refusal("168.63.129.17") is None


# --- this machine's own addresses ----------------------------------------------------
def test_this_machines_addresses_are_known_and_refused_by_the_processes_policies(
    tmp_path: Any,
) -> None:
    found = outbound.discover_host_addresses()
    for address in MACHINE:
        assert ipaddress.ip_address(address) in found
    assert not any(a.is_loopback for a in found)
    address = _an_address()
    broker = Settings(data_dir=tmp_path, outbound_allow=LOOPBACK).outbound_policy
    reason = broker.refusal(address)
    assert reason is not None and OWN in reason
    gateway = GatewaySettings(key=GATEWAY_KEY, outbound_allow=LOOPBACK).outbound_policy
    reason = gateway.refusal(address)
    assert reason is not None and "the gateway's own host" in reason
    # An operator may open it, naming it exactly.
    exact = f"{address}/{ipaddress.ip_address(address).max_prefixlen}"
    opened = Settings(data_dir=tmp_path, outbound_allow=f"{LOOPBACK},{exact}")
    assert opened.outbound_policy.refusal(address) is None


def _tenant_admin(api: Api) -> Api:
    return tenant_admin_of(api, "evil", "evil-boss")


def test_no_probe_of_the_brokers_own_address(
    api: Api, everywhere: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant admin's static machine at the broker host's LAN address: refused on
    save when written as the address, and a name that resolves to it is not probed."""
    evil = _tenant_admin(api)
    ports = {"rdp": everywhere.port, "vnc": everywhere.port, "ssh": everywhere.port}
    machine = {"name": "self", "address": everywhere.address, "ports": ports}
    body = {"name": "lab", "kind": "static", "params": {"machines": [machine]}}
    refused = evil.post("centers", body, status=422)
    assert OWN in refused["detail"] and "self" in refused["detail"]

    # A name is checked once resolved: saved while it resolved nowhere, by the time of
    # the probe it resolves to the broker host's own address.
    machine["address"] = "self.lab.example"
    center = evil.post("centers", body)
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real(everywhere.address if host == "self.lab.example" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    desktop = evil.get(f"desktops?center_id={center['id']}")["items"][0]
    answer = evil.post(f"desktops/{desktop['id']}/probe", {}, status=200)
    assert answer["reachable"] is False
    for result in answer["protocols"].values():
        assert "is not probed" in result["message"] and OWN in result["message"]
    time.sleep(0.2)
    assert everywhere.accepted == 0  # not even a TCP handshake


# --- the second line: a connection that came back to its own host ---------------------
def test_a_connection_back_to_its_own_host_is_refused_after_connecting(
    everywhere: Service,
) -> None:
    # As though the address came up after the host's addresses were last read.
    unaware = OutboundPolicy.from_text(LOOPBACK, outbound.DEFAULT_DENY, host=frozenset())
    assert unaware.refusal(everywhere.address) is None
    sock = socket.create_connection((everywhere.address, everywhere.port), timeout=5)
    with pytest.raises(OutboundRefused, match="came back to the address it left from"):
        unaware.check_socket(sock, "connecting to self")
    assert sock.fileno() == -1  # closed before a byte was sent
    # Loopback is no host address here: the tests' servers are reached as before.
    with socket.create_connection(("127.0.0.1", everywhere.port), timeout=5) as plain:
        unaware.check_socket(plain, "connecting to loopback")
    # The same guard on HTTP (Keystone, OpenID providers, webhooks).
    url = f"http://{_url_host(everywhere.address)}:{everywhere.port}/"
    outbound.install(unaware)
    with (
        httpx.Client(transport=outbound_http.guarded_transport()) as client,
        pytest.raises(OutboundRefused, match="came back to the address it left from"),
    ):
        client.get(url)
    # And with the host's addresses read, refused by the check itself.
    outbound.install(OutboundPolicy.from_text(LOOPBACK, outbound.DEFAULT_DENY))
    with (
        httpx.Client(transport=outbound_http.guarded_transport()) as client,
        pytest.raises(OutboundRefused, match="is an address of the broker's own host"),
    ):
        client.get(url)


# --- the gateway -------------------------------------------------------------------
def _read(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(3)
        try:
            return sock.recv(200)
        except (TimeoutError, ConnectionResetError):
            return b""


def test_the_gateway_opens_no_tunnel_to_its_own_hosts_address(
    ctx: BrokerContext, everywhere: Service
) -> None:
    with broker_and_gateway(ctx) as (_broker, gateway):
        # The gateway process's policy, loopback opened as in the tests.
        policy = GatewaySettings(key=GATEWAY_KEY, outbound_allow=LOOPBACK).outbound_policy
        outbound.install(policy)
        forward = httpx.post(
            f"{gateway.url}/forwards",
            json={"ticket": signed_ticket(everywhere.address, everywhere.port, "vnc")},
            timeout=10,
        )
        assert forward.status_code == 409, forward.text
        assert "the gateway's own host" in forward.json()["detail"]
        ticket = signed_ticket(everywhere.address, everywhere.port, "html5-vnc")
        url = f"ws://127.0.0.1:{gateway.port}/ws/vnc?ticket={ticket}"
        code, reason = asyncio.run(closed_with(url))
        assert code != 1000 and "is not connected to" in reason
        assert everywhere.accepted == 0

        # The second line: an address the gateway did not know of at its last reading
        # is let through the check before connecting, and refused once connected.
        outbound.install(
            OutboundPolicy.from_text(LOOPBACK, outbound.DEFAULT_DENY, host=frozenset())
        )
        forward = httpx.post(
            f"{gateway.url}/forwards",
            json={"ticket": signed_ticket(everywhere.address, everywhere.port, "vnc")},
            timeout=10,
        )
        assert forward.status_code == 201, forward.text
        assert _read(forward.json()["port"]) == b""  # nothing of the service relayed
        ticket = signed_ticket(everywhere.address, everywhere.port, "html5-vnc")
        url = f"ws://127.0.0.1:{gateway.port}/ws/vnc?ticket={ticket}"
        code, reason = asyncio.run(closed_with(url))
        assert code != 1000 and "came back" in reason


def test_the_broker_mints_no_ticket_for_its_own_hosts_address(settings: Settings) -> None:
    """A desktop whose address is the broker host's (saved before this policy, say):
    no ticket, so no tunnel, the connect answering 409 in words."""
    settings = settings.model_copy(update={"gateway_key": GATEWAY_KEY})
    with pytest.raises(gateway_service.TargetRefused, match="the broker's own host"):
        gateway_service.mint(
            settings,
            user_id="u",
            username="mallory",
            tenant_id="t",
            desktop_id="d",
            desktop_name="target-1",
            protocol=Protocol.VNC,
            host=MACHINE[0],
            port=5900,
            client="127.0.0.1",
        )

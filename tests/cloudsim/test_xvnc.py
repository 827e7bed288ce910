"""Real Xvnc desktops behind instances, each on the instance's own loopback address."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from ipaddress import ip_address, ip_network
from typing import Any

import pytest

from cloudsim.server import CloudSim
from tests.cloudsim.conftest import POLL, make_connection
from tests.helpers import cloud_networks
from tests.tools import VNCPASSWD, XVNC, require


def banner(address: str, port: int = 5900, timeout: float = 10.0) -> bytes:
    """Connect until the desktop answers; return the RFB version banner."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=2) as sock:
                return sock.recv(12)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def security_types(address: str, port: int = 5900) -> list[int]:
    """Do the RFB 3.8 version exchange and return the offered security types."""
    with socket.create_connection((address, port), timeout=5) as sock:
        sock.recv(12)
        sock.sendall(b"RFB 003.008\n")
        count = sock.recv(1)[0]
        if count == 0:  # RFB: the server refused, and says why
            length = int.from_bytes(sock.recv(4), "big")
            raise AssertionError(f"the desktop refused: {sock.recv(length)!r}")
        return list(sock.recv(count))


def closed(address: str, port: int = 5900, timeout: float = 30.0) -> bool:
    """Wait until nothing listens on the address any more (a loaded machine may take a
    while to end an Xvnc: the deadline only matters when it never ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((address, port), timeout=1).close()
        except OSError:
            return True
        time.sleep(0.05)
    return False


def no_desktop(address: str, port: int = 5900) -> bool:
    """True when a connection is refused or closed without an RFB banner."""
    try:
        with socket.create_connection((address, port), timeout=2) as sock:
            return sock.recv(12) == b""
    except OSError:
        return True


@pytest.fixture(scope="module")
def vsim() -> Iterator[CloudSim]:
    """A simulator whose ACTIVE instances run real Xvnc desktops."""
    require(XVNC, VNCPASSWD)
    simulator = CloudSim(
        projects=["demo"], clock_speed=40, backing="xvnc", **cloud_networks()
    ).start()
    yield simulator
    simulator.stop()


def _boot(conn: Any, name: str) -> Any:
    image = conn.image.find_image("cirros-0.6.2-x86_64-disk")
    network = conn.network.find_network("private")
    server = conn.compute.create_server(
        name=name, image_id=image.id, flavor_id="1", networks=[{"uuid": network.id}]
    )
    return conn.compute.wait_for_server(server, interval=POLL)


def test_instance_desktop_follows_power_state(vsim: CloudSim) -> None:
    conn = make_connection(vsim)
    server = _boot(conn, "desktop-1")
    other = _boot(conn, "desktop-2")
    address = server.addresses["private"][0]["addr"]
    assert ip_address(address) in ip_network(cloud_networks()["fixed_cidr"])
    assert banner(address) in (b"RFB 003.008\n", b"RFB 003.007\n")
    assert banner(vsim.server_address(other.id) or "").startswith(b"RFB 003.00")
    assert security_types(address) == [1]  # SecurityTypes None

    conn.compute.stop_server(server)
    conn.compute.wait_for_server(server, status="SHUTOFF", interval=POLL)
    assert closed(address)
    assert banner(vsim.server_address(other.id) or "").startswith(b"RFB")

    conn.compute.start_server(server)
    conn.compute.wait_for_server(server, status="ACTIVE", interval=POLL)
    assert banner(address).startswith(b"RFB 003.00")

    # Through a floating IP, as a broker preferring floating addresses connects.
    public = conn.network.find_network("public")
    port = next(conn.network.ports(device_id=server.id))
    fip = conn.network.create_ip(floating_network_id=public.id, port_id=port.id)
    floating = fip.floating_ip_address
    assert banner(floating).startswith(b"RFB 003.00")
    assert security_types(floating) == [1]
    conn.network.update_ip(fip, port_id=None)
    assert closed(floating)
    conn.network.update_ip(fip, port_id=port.id)
    assert banner(floating).startswith(b"RFB 003.00")

    conn.compute.suspend_server(server)
    conn.compute.wait_for_server(server, status="SUSPENDED", interval=POLL)
    assert closed(address)

    assert no_desktop(floating)  # the relay accepts, but nothing answers behind it
    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, interval=POLL)
    conn.compute.delete_server(other)
    conn.compute.wait_for_delete(other, interval=POLL)
    assert vsim.wait_backing_idle()
    assert vsim.desktops() == []


def test_stop_cleans_up_every_desktop() -> None:
    require(XVNC, VNCPASSWD)
    simulator = CloudSim(
        projects=["demo"],
        clock_speed=40,
        backing="xvnc",
        vnc_password="s3cret-pw",
        **cloud_networks(),
    ).start()
    try:
        conn = make_connection(simulator)
        server = _boot(conn, "locked-desktop")
        address = simulator.server_address(server.id) or ""
        banner(address)
        assert security_types(address) == [2]  # VncAuth
        pids = [int(str(d["pid"])) for d in simulator.desktops()]
        assert len(pids) == 1
    finally:
        simulator.stop()
    assert closed(address)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

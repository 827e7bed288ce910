"""The metadata service, answered by the caller's source address as Nova does."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from cloudsim.server import CloudSim


def fetch(
    sim: CloudSim, path: str, source: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """GET a metadata path, optionally from a given source address (the instance's IP)."""
    parts = urlsplit(sim.metadata_url)
    assert parts.hostname is not None and parts.port is not None
    conn = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=5, source_address=(source, 0) if source else None
    )
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_metadata_by_source_address(sim: CloudSim, conn: Any, boot: Callable[..., Any]) -> None:
    user_data = base64.b64encode(b"#cloud-config\nagent: deskbroker\n").decode()
    first = boot("desk-a", metadata={"pool": "lab"}, user_data=user_data)
    second = boot("desk-b")
    ip_a = sim.server_address(first.id)
    ip_b = sim.server_address(second.id)
    assert ip_a and ip_b and ip_a != ip_b

    status, body = fetch(sim, "/openstack/latest/meta_data.json", source=ip_a)
    assert status == 200
    meta = json.loads(body)
    assert meta["uuid"] == first.id and meta["name"] == "desk-a"
    assert meta["hostname"] == "desk-a.novalocal"
    assert meta["availability_zone"] == "nova"
    assert meta["meta"] == {"pool": "lab"}
    assert fetch(sim, "/openstack/latest/user_data", source=ip_a) == (
        200,
        b"#cloud-config\nagent: deskbroker\n",
    )
    assert fetch(sim, "/openstack/latest/user_data", source=ip_b)[0] == 404

    status, body = fetch(sim, "/openstack/latest/meta_data.json", source=ip_b)
    assert json.loads(body)["uuid"] == second.id
    assert fetch(sim, "/latest/meta-data/local-ipv4", source=ip_b) == (200, ip_b.encode())
    assert fetch(sim, "/latest/meta-data/instance-id", source=ip_b)[1].startswith(b"i-")
    assert fetch(sim, "/latest/meta-data/public-ipv4", source=ip_b) == (200, b"")
    assert fetch(sim, "/latest/meta-data/placement/availability-zone", source=ip_b) == (
        200,
        b"nova",
    )

    public = conn.network.find_network("public")
    port = next(conn.network.ports(device_id=second.id))
    fip = conn.network.create_ip(floating_network_id=public.id, port_id=port.id)
    assert fetch(sim, "/latest/meta-data/public-ipv4", source=ip_b) == (
        200,
        fip.floating_ip_address.encode(),
    )

    listing = fetch(sim, "/latest/meta-data/", source=ip_b)[1].decode().splitlines()
    assert "public-ipv4" in listing and "placement/" in listing
    network = json.loads(fetch(sim, "/openstack/latest/network_data.json", source=ip_b)[1])
    assert network["networks"][0]["ip_address"] == ip_b


def test_unknown_caller_is_404_and_overrides_work(sim: CloudSim, boot: Callable[..., Any]) -> None:
    server = boot("override")
    assert fetch(sim, "/openstack/latest/meta_data.json")[0] == 404
    address = sim.server_address(server.id)
    assert address is not None
    status, body = fetch(
        sim, "/openstack/latest/meta_data.json", headers={"X-Forwarded-For": address}
    )
    assert status == 200 and json.loads(body)["uuid"] == server.id
    status, body = fetch(
        sim, "/openstack/latest/meta_data.json", headers={"X-Instance-ID": server.id}
    )
    assert json.loads(body)["name"] == "override"
    status, body = fetch(sim, f"/latest/meta-data/local-ipv4?ip={address}")
    assert (status, body) == (200, address.encode())
    assert fetch(sim, "/")[0] == 200
    assert b"latest" in fetch(sim, "/openstack")[1]


def test_deleted_instance_has_no_metadata(
    sim: CloudSim, conn: Any, boot: Callable[..., Any]
) -> None:
    server = boot("gone")
    address = sim.server_address(server.id)
    conn.compute.delete_server(server)
    sim.advance_clock(5)
    assert fetch(sim, "/openstack/latest/meta_data.json", source=address)[0] == 404


def test_metadata_faults_and_log(sim: CloudSim, boot: Callable[..., Any]) -> None:
    server = boot("faulty")
    address = sim.server_address(server.id)
    sim.inject_fault(503, path="meta_data.json")
    assert fetch(sim, "/openstack/latest/meta_data.json", source=address)[0] == 503
    assert fetch(sim, "/openstack/latest/meta_data.json", source=address)[0] == 200
    entries = sim.requests(path="meta_data.json")
    assert [e["status"] for e in entries] == [503, 200]
    assert entries[1]["client"] == address and entries[1]["service"] == "metadata"

"""Neutron (ports, floating IPs, quotas, security groups), Cinder volumes, Glance images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openstack
import pytest

from cloudsim.server import CloudSim
from tests.cloudsim.conftest import POLL


def test_floating_ip_lifecycle(sim: CloudSim, conn: Any, boot: Callable[..., Any]) -> None:
    server = boot("fip")
    port = next(conn.network.ports(device_id=server.id))
    public = conn.network.find_network("public")
    assert public.is_router_external
    fip = conn.network.create_ip(floating_network_id=public.id, port_id=port.id)
    assert fip.floating_ip_address.startswith("127.200.")
    assert fip.port_id == port.id and fip.fixed_ip_address == port.fixed_ips[0]["ip_address"]
    assert fip.status == "ACTIVE"
    created = [e for e in sim.requests(method="POST", path="/floatingips$")]
    assert created[-1]["status"] == 201
    addresses = conn.compute.get_server(server.id).addresses["private"]
    assert {a["OS-EXT-IPS:type"] for a in addresses} == {"fixed", "floating"}
    fip = conn.network.update_ip(fip, port_id=None)
    assert fip.port_id is None and fip.status == "DOWN"
    assert len(conn.compute.get_server(server.id).addresses["private"]) == 1
    fip = conn.network.update_ip(fip, port_id=port.id)
    assert fip.port_id == port.id
    conn.network.delete_ip(fip)
    assert list(conn.network.ips()) == []


def test_second_floating_ip_on_same_port_is_409(conn: Any, boot: Callable[..., Any]) -> None:
    server = boot("fip2")
    port = next(conn.network.ports(device_id=server.id))
    public = conn.network.find_network("public")
    conn.network.create_ip(floating_network_id=public.id, port_id=port.id)
    with pytest.raises(openstack.exceptions.ConflictException):
        conn.network.create_ip(floating_network_id=public.id, port_id=port.id)


def test_floating_ip_quota_is_409(sim: CloudSim, conn: Any) -> None:
    sim.set_quota("demo", floatingip=2)
    public = conn.network.find_network("public")
    conn.network.create_ip(floating_network_id=public.id)
    conn.network.create_ip(floating_network_id=public.id)
    with pytest.raises(openstack.exceptions.ConflictException) as info:
        conn.network.create_ip(floating_network_id=public.id)
    assert info.value.status_code == 409
    resp = conn.network.post(
        "/floatingips", json={"floatingip": {"floating_network_id": public.id}}
    )
    assert resp.status_code == 409
    assert resp.json()["NeutronError"]["type"] == "OverQuota"
    quota = conn.network.get(f"/quotas/{sim.project_id('demo')}/details").json()["quota"]
    assert quota["floatingip"] == {"limit": 2, "used": 2, "reserved": 0}


def test_networks_subnets_security_groups(conn: Any, boot: Callable[..., Any]) -> None:
    names = {n.name for n in conn.network.networks()}
    assert names == {"public", "private"}
    subnet = next(conn.network.subnets(name="private-subnet"))
    assert subnet.cidr == "127.100.0.0/14"
    groups = {g.name for g in conn.network.security_groups()}
    assert groups == {"default"}
    group = conn.network.create_security_group(name="rdp")
    rule = conn.network.create_security_group_rule(
        security_group_id=group.id,
        direction="ingress",
        protocol="tcp",
        port_range_min=3389,
        port_range_max=3389,
        remote_ip_prefix="0.0.0.0/0",
    )
    assert rule.port_range_min == 3389
    server = boot("sg", security_groups=[{"name": "rdp"}])
    port = next(conn.network.ports(device_id=server.id))
    assert port.security_group_ids == [group.id]
    with pytest.raises(openstack.exceptions.ConflictException):
        conn.network.delete_security_group(group)
    with pytest.raises(openstack.exceptions.NotFoundException):
        conn.network.get_port("missing")


def test_ports_follow_the_server(sim: CloudSim, conn: Any, boot: Callable[..., Any]) -> None:
    server = boot("ports")
    port = next(conn.network.ports(device_id=server.id))
    assert port.status == "ACTIVE" and port.device_owner == "compute:nova"
    conn.compute.stop_server(server)
    conn.compute.wait_for_server(server, status="SHUTOFF", interval=POLL)
    assert conn.network.get_port(port.id).status == "DOWN"
    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, interval=POLL)
    assert list(conn.network.ports(device_id=server.id)) == []


def test_volume_create_attach_detach_delete(
    sim: CloudSim, conn: Any, boot: Callable[..., Any]
) -> None:
    server = boot("vol")
    volume = conn.block_storage.create_volume(size=2, name="home-alice")
    assert volume.status == "creating"
    volume = conn.block_storage.wait_for_status(volume, "available", interval=POLL)
    conn.compute.create_volume_attachment(server, volume_id=volume.id)
    volume = conn.block_storage.wait_for_status(volume, "in-use", interval=POLL)
    assert volume.attachments[0]["server_id"] == server.id
    assert volume.attachments[0]["device"] == "/dev/vdb"
    detail = conn.compute.get_server(server.id)
    assert [v["id"] for v in detail.attached_volumes] == [volume.id]
    with pytest.raises(openstack.exceptions.BadRequestException):
        conn.block_storage.delete_volume(volume)
    conn.compute.delete_volume_attachment(server, volume.id)
    volume = conn.block_storage.wait_for_status(volume, "available", interval=POLL)
    conn.block_storage.delete_volume(volume)
    conn.block_storage.wait_for_delete(volume, interval=POLL)
    assert list(conn.block_storage.volumes()) == []


def test_data_volume_survives_server_delete(conn: Any, boot: Callable[..., Any]) -> None:
    server = boot("keeps-data")
    volume = conn.block_storage.create_volume(size=1, name="data")
    volume = conn.block_storage.wait_for_status(volume, "available", interval=POLL)
    conn.compute.create_volume_attachment(server, volume_id=volume.id)
    conn.block_storage.wait_for_status(volume, "in-use", interval=POLL)
    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, interval=POLL)
    assert conn.block_storage.get_volume(volume.id).status == "available"


def test_boot_from_volume(sim: CloudSim, conn: Any) -> None:
    image = conn.image.find_image("ubuntu-22.04-desktop")
    network = conn.network.find_network("private")
    server = conn.compute.create_server(
        name="bfv",
        flavor_id="1",
        networks=[{"uuid": network.id}],
        block_device_mapping=[
            {
                "boot_index": 0,
                "uuid": image.id,
                "source_type": "image",
                "destination_type": "volume",
                "volume_size": 10,
                "delete_on_termination": True,
            }
        ],
    )
    server = conn.compute.wait_for_server(server, interval=POLL)
    raw = conn.compute.get(f"/servers/{server.id}", microversion="2.96").json()["server"]
    assert raw["image"] == ""
    (root,) = raw["os-extended-volumes:volumes_attached"]
    volume = conn.block_storage.get_volume(root["id"])
    assert volume.is_bootable and volume.status == "in-use" and volume.size == 10
    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, interval=POLL)
    assert list(conn.block_storage.volumes()) == []


def test_volume_quota_is_413(sim: CloudSim, conn: Any) -> None:
    sim.set_quota("demo", volumes=1)
    conn.block_storage.create_volume(size=1)
    with pytest.raises(openstack.exceptions.HttpException) as info:
        conn.block_storage.create_volume(size=1)
    assert info.value.status_code == 413


def test_images_paging_and_get(sim: CloudSim, conn: Any) -> None:
    sim.seed_images(56)
    mark = sim.last_request_seq
    images = list(conn.image.images())
    assert len(images) == 60
    pages = [e for e in sim.requests(since=mark) if e["path"] == "/image/v2/images"]
    assert len(pages) == 3  # Glance's default page is 25
    raw = conn.image.get("/images?limit=10").json()
    assert len(raw["images"]) == 10 and raw["next"].startswith("/v2/images?")
    cirros = conn.image.find_image("cirros-0.6.2-x86_64-disk")
    again = conn.image.get_image(cirros.id)
    assert again.status == "active" and again.disk_format == "qcow2"
    assert [i.name for i in conn.image.images(name="rocky-9-desktop")] == ["rocky-9-desktop"]

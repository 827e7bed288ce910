"""The Nova metadata service: EC2 and OpenStack trees, answered by the caller's address."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any

from cloudsim.core import Core
from cloudsim.state import Server
from cloudsim.web import ApiError, Request, Response, text_response

EC2_VERSIONS = [
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "latest",
]
OPENSTACK_VERSIONS = [
    "2012-08-10",
    "2013-04-04",
    "2013-10-17",
    "2015-10-15",
    "2016-06-30",
    "2016-10-06",
    "2017-02-22",
    "2018-08-27",
    "2020-10-14",
    "latest",
]

Tree = dict[str, Any]


class MetadataService:
    """Answers like nova-api-metadata behind the Neutron proxy.

    The instance is found by the source address of the connection (its fixed IP). Tests
    that cannot bind a source address may name it with the ``X-Forwarded-For`` header (an
    IP, as the Neutron proxy sends), the ``X-Instance-ID`` header, or the ``ip`` /
    ``instance_id`` query parameters.
    """

    def __init__(self, core: Core) -> None:
        self.core = core
        self.state = core.state

    def find_server(self, req: Request) -> Server:
        """The calling instance, or 404 as Nova answers for unknown addresses."""
        instance_id = req.header("X-Instance-ID") or req.arg("instance_id")
        server: Server | None = None
        if instance_id:
            server = self.state.live_server(instance_id, None)
        else:
            forwarded = req.header("X-Forwarded-For") or req.arg("ip")
            address = forwarded.split(",")[0].strip() if forwarded else req.client_ip
            port = self.state.ports_by_ip.get(address)
            if port is not None:
                server = self.state.live_server(port.device_id, None)
        if server is None:
            raise ApiError(404, "Not Found")
        return server

    def handle(self, req: Request) -> Response:
        """Serve one metadata path."""
        path = req.path.strip("/")
        parts = [p for p in path.split("/") if p]
        if not parts:
            return text_response(200, "\n".join(EC2_VERSIONS))
        if parts[0] == "openstack":
            if len(parts) == 1:
                return text_response(200, "\n".join(OPENSTACK_VERSIONS))
            server = self.find_server(req)
            if parts[1] not in OPENSTACK_VERSIONS:
                raise ApiError(404, "Not Found")
            return self._openstack(server, parts[2:])
        if parts[0] not in EC2_VERSIONS:
            raise ApiError(404, "Not Found")
        server = self.find_server(req)
        return self._ec2(server, parts[1:])

    # -- OpenStack tree -----------------------------------------------------------------
    def meta_data(self, server: Server) -> dict[str, Any]:
        """The contents of meta_data.json."""
        data: dict[str, Any] = {
            "uuid": server.id,
            "meta": dict(server.metadata),
            "hostname": f"{server.hostname}.novalocal",
            "name": server.name,
            "launch_index": 0,
            "availability_zone": server.availability_zone,
            "project_id": server.project_id,
            "devices": [],
            "dedicated_cpus": [],
            "random_seed": base64.b64encode(secrets.token_bytes(512)).decode(),
        }
        if server.key_name:
            pair = self.state.keypairs.get((server.user_id, server.key_name))
            if pair is not None:
                data["public_keys"] = {pair.name: pair.public_key}
                data["keys"] = [{"name": pair.name, "type": pair.type, "data": pair.public_key}]
        return data

    def network_data(self, server: Server) -> dict[str, Any]:
        """The contents of network_data.json."""
        links, networks = [], []
        for index, port in enumerate(self.state.ports_by_device.get(server.id, ())):
            subnet = self.state.subnets[port.subnet_id]
            links.append(
                {
                    "id": f"tap{port.id[:11]}",
                    "vif_id": port.id,
                    "type": "ovs",
                    "mtu": 1442,
                    "ethernet_mac_address": port.mac,
                }
            )
            networks.append(
                {
                    "id": f"network{index}",
                    "type": "ipv4",
                    "link": f"tap{port.id[:11]}",
                    "ip_address": port.ip,
                    "netmask": str(subnet.pool.network.netmask),
                    "routes": [
                        {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": subnet.pool.gateway}
                    ],
                    "network_id": port.network_id,
                    "services": [],
                }
            )
        return {"links": links, "networks": networks, "services": []}

    def _user_data(self, server: Server) -> bytes | None:
        if server.user_data is None:
            return None
        try:
            return base64.b64decode(server.user_data)
        except (binascii.Error, ValueError):
            return server.user_data.encode()

    def _openstack(self, server: Server, rest: list[str]) -> Response:
        files = [
            "meta_data.json",
            "password",
            "vendor_data.json",
            "network_data.json",
            "vendor_data2.json",
        ]
        user_data = self._user_data(server)
        if user_data is not None:
            files.append("user_data")
        if not rest:
            return text_response(200, "\n".join(files))
        name = "/".join(rest)
        if name == "meta_data.json":
            return _json(self.meta_data(server))
        if name == "network_data.json":
            return _json(self.network_data(server))
        if name in ("vendor_data.json", "vendor_data2.json"):
            return _json({})
        if name == "password":
            return text_response(200, "")
        if name == "user_data" and user_data is not None:
            return Response(200, user_data, content_type="application/octet-stream")
        raise ApiError(404, "Not Found")

    # -- EC2 tree -----------------------------------------------------------------------
    def ec2_tree(self, server: Server) -> Tree:
        """The EC2-compatible meta-data tree."""
        ports = self.state.ports_by_device.get(server.id, [])
        fixed = ports[0].ip if ports else ""
        fip = self.state.floating_by_port.get(ports[0].id) if ports else None
        image = self.state.images.get(server.image_id)
        host = f"{server.hostname}.novalocal"
        tree: Tree = {
            "ami-id": f"ami-{image.seq:08x}" if image else "ami-00000000",
            "ami-launch-index": "0",
            "ami-manifest-path": "FIXME",  # the literal value real Nova serves here
            "block-device-mapping": {"ami": "vda", "root": "/dev/vda"},
            "hostname": host,
            "instance-action": "none",
            "instance-id": f"i-{server.seq:08x}",
            "instance-type": server.flavor.name,
            "local-hostname": host,
            "local-ipv4": fixed,
            "placement": {"availability-zone": server.availability_zone},
            "public-hostname": host,
            "public-ipv4": fip.address if fip else "",
            "reservation-id": server.reservation_id,
            "security-groups": "\n".join(server.security_groups),
        }
        if server.key_name:
            pair = self.state.keypairs.get((server.user_id, server.key_name))
            if pair is not None:
                tree["public-keys"] = {f"0={pair.name}": {"openssh-key": pair.public_key}}
        return tree

    def _ec2(self, server: Server, rest: list[str]) -> Response:
        user_data = self._user_data(server)
        if not rest:
            return text_response(200, "meta-data/" + ("\nuser-data" if user_data else ""))
        if rest[0] == "user-data":
            if user_data is None:
                raise ApiError(404, "Not Found")
            return Response(200, user_data, content_type="application/octet-stream")
        if rest[0] != "meta-data":
            raise ApiError(404, "Not Found")
        node: Any = self.ec2_tree(server)
        for part in rest[1:]:
            if not isinstance(node, dict):
                raise ApiError(404, "Not Found")
            if part not in node and part.split("=")[0] == "0" and "public-keys" in rest:
                part = next(iter(node), part)
            if part not in node:
                raise ApiError(404, "Not Found")
            node = node[part]
        if isinstance(node, dict):
            listing = [k + "/" if isinstance(v, dict) else k for k, v in node.items()]
            return text_response(200, "\n".join(listing))
        return text_response(200, str(node))

    @staticmethod
    def render_error(err: ApiError) -> Response:
        """Plain-text errors as the metadata service sends them."""
        return text_response(err.status, err.message)


def _json(data: dict[str, Any]) -> Response:
    return Response(200, json.dumps(data).encode(), content_type="application/json")

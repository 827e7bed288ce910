"""The OpenStack center driver."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

from pydantic import BaseModel

from deskbroker.centers.base import (
    Capability,
    CenterDriver,
    Changes,
    ImageInfo,
    MachineInfo,
    PowerAction,
    ProvisionRequest,
)
from deskbroker.centers.openstack import mapping
from deskbroker.centers.openstack.session import CloudFailure, OpenStackParams, ProjectSession
from deskbroker.errors import CenterError

_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)

_ACTIONS: dict[PowerAction, dict[str, Any]] = {
    PowerAction.START: {"os-start": None},
    PowerAction.STOP: {"os-stop": None},
    PowerAction.SUSPEND: {"suspend": None},
    PowerAction.RESUME: {"resume": None},
    PowerAction.REBOOT: {"reboot": {"type": "SOFT"}},
    PowerAction.REBOOT_HARD: {"reboot": {"type": "HARD"}},
}


def _cursor_from(date_header: str | None) -> str | None:
    if not date_header:
        return None
    try:
        moment = parsedate_to_datetime(date_header)
    except (TypeError, ValueError):
        return None
    return (moment - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


class QuotaExceeded(CenterError):
    status = 409
    title = "Quota exceeded"


class OpenStackCenter(CenterDriver):
    """One OpenStack project: inventory, images, provisioning, power, leak sweeps."""

    kind: ClassVar[str] = "openstack"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(set(Capability))
    Params: ClassVar[type[BaseModel]] = OpenStackParams

    def __init__(self, params: Mapping[str, Any], secrets: Mapping[str, str]) -> None:
        super().__init__(params, secrets)
        assert isinstance(self.params, OpenStackParams)
        self.os_params: OpenStackParams = self.params
        self.session = ProjectSession(self.os_params, secrets)
        self._names: dict[tuple[str, str], str] = {}

    # --- inventory -------------------------------------------------------------------
    def changes(self, since: str | None) -> Changes:
        """Servers changed since ``since`` (all when ``None``), read as raw JSON pages.
        The cursor is the cloud's time when the listing began, less a second, since
        Nova compares ``changes-since`` in whole seconds."""
        query: dict[str, Any] = {"limit": 1000}
        if since is not None:
            query["changes-since"] = since
        machines: list[MachineInfo] = []
        gone: list[str] = []
        cursor: str | None = None
        for page, date in self.session.pages("/servers/detail", "servers", query):
            if cursor is None:
                cursor = _cursor_from(date)
            for server in page:
                if since is not None and str(server.get("status", "")).upper() == "DELETED":
                    gone.append(str(server["id"]))
                else:
                    machines.append(mapping.machine(server))
        return Changes(machines, gone, cursor)

    def inventory(self) -> list[MachineInfo]:
        return self.changes(None).machines

    def machine(self, external_id: str) -> MachineInfo | None:
        try:
            body = self.session.compute_get(f"/servers/{external_id}")
        except CloudFailure as exc:
            if exc.cloud_status == 404:
                return None
            raise
        return mapping.machine(body["server"])

    def images(self) -> list[ImageInfo]:
        found: list[ImageInfo] = []
        query: dict[str, Any] = {"limit": 500}
        while True:
            body = self.session.image_get("/images", query)
            images = body.get("images", [])
            found.extend(mapping.image(i) for i in images)
            if not body.get("next") or not images:
                return found
            query["marker"] = images[-1]["id"]

    def catalog(self) -> dict[str, list[dict[str, Any]]]:
        """What the admin's pickers offer: flavors, networks, zones, security groups."""
        flavors = self.session.compute_get("/flavors/detail").get("flavors", [])
        zones = self.session.compute_get("/os-availability-zone").get("availabilityZoneInfo", [])
        networks = self.session.network_get("/networks").get("networks", [])
        groups = self.session.network_get("/security-groups").get("security_groups", [])
        return {
            "flavors": [
                {"id": f["id"], "name": f["name"], "vcpus": f.get("vcpus"), "ram": f.get("ram")}
                for f in flavors
            ],
            "availability_zones": [
                {"name": z["zoneName"], "available": (z.get("zoneState") or {}).get("available")}
                for z in zones
            ],
            "networks": [
                {"id": n["id"], "name": n.get("name"), "external": n.get("router:external")}
                for n in networks
            ],
            "security_groups": [{"id": g["id"], "name": g.get("name")} for g in groups],
            "images": [{"id": i.external_id, "name": i.name, "os": i.os} for i in self.images()],
        }

    # --- provisioning ----------------------------------------------------------------
    def _resolve(self, kind: str, value: str) -> str:
        if _UUID.match(value):
            return value
        key = (kind, value)
        if key not in self._names:
            if kind == "flavor":
                items = self.session.compute_get("/flavors").get("flavors", [])
            elif kind == "image":
                items = self.session.image_get("/images", {"name": value}).get("images", [])
            else:
                items = self.session.network_get("/networks", {"name": value}).get("networks", [])
            for item in items:
                if item.get("name") == value or item.get("id") == value:
                    self._names[key] = str(item["id"])
                    break
            else:
                raise CenterError(f"the cloud has no {kind} named {value!r}")
        return self._names[key]

    def create(self, request: ProvisionRequest) -> str:
        if not request.image or not request.flavor:
            raise CenterError("an OpenStack desktop needs an image and a flavor")
        network = request.network or self.os_params.default_network
        server: dict[str, Any] = {
            "name": request.name,
            "imageRef": self._resolve("image", request.image),
            "flavorRef": self._resolve("flavor", request.flavor),
            "networks": [{"uuid": self._resolve("network", network)}] if network else "auto",
            "metadata": {k: str(v)[:255] for k, v in request.metadata.items()},
            "tags": [self.os_params.broker_tag, *request.tags],
        }
        if request.availability_zone:
            server["availability_zone"] = request.availability_zone
        if request.security_groups:
            server["security_groups"] = [{"name": g} for g in request.security_groups]
        if request.user_data:
            server["user_data"] = base64.b64encode(request.user_data.encode()).decode()
        volume = request.data_volume_id
        if volume is None and request.data_volume_gb:
            volume = self.create_volume(f"{request.name}-data", request.data_volume_gb, {})
        if volume is not None:
            server["block_device_mapping_v2"] = [
                {
                    "boot_index": 0,
                    "uuid": server["imageRef"],
                    "source_type": "image",
                    "destination_type": "local",
                    "delete_on_termination": True,
                },
                {
                    "boot_index": -1,
                    "uuid": volume,
                    "source_type": "volume",
                    "destination_type": "volume",
                    "delete_on_termination": False,
                },
            ]
        try:
            response = self.session.compute_post("/servers", {"server": server}, idempotent=False)
        except CloudFailure as exc:
            words = mapping.quota_words(exc.detail) if exc.cloud_status in (403, 413) else None
            if words is not None:
                raise QuotaExceeded(words) from exc
            raise
        return str(response.json()["server"]["id"])

    def create_volume(self, name: str, size_gb: int, metadata: Mapping[str, str]) -> str:
        """A Cinder volume, e.g. a user's data disk that follows them between desktops."""
        response = self.session.call(
            lambda: self.session.connection().block_storage.post(
                "/volumes",
                json={"volume": {"name": name, "size": size_gb, "metadata": dict(metadata)}},
            ),
            "POST /volumes",
        )
        return str(response.json()["volume"]["id"])

    def attach_volume(self, external_id: str, volume_id: str) -> None:
        self.session.compute_post(
            f"/servers/{external_id}/os-volume_attachments",
            {"volumeAttachment": {"volumeId": volume_id}},
        )

    def detach_volume(self, external_id: str, volume_id: str) -> None:
        try:
            self.session.compute_delete(f"/servers/{external_id}/os-volume_attachments/{volume_id}")
        except CloudFailure as exc:
            if exc.cloud_status != 404:
                raise

    def attach_address(self, external_id: str, request: ProvisionRequest) -> str:
        found = self.machine(external_id)
        if found is None:
            raise CenterError(f"instance {external_id} disappeared while it was being addressed")
        if not request.floating_ip:
            return found.address
        ports = self.session.network_get("/ports", {"device_id": external_id}).get("ports", [])
        if not ports:
            raise CenterError(f"instance {external_id} has no network port for a floating IP")
        floating = self._free_floating_ip()
        body = self.session.network_send(
            "PUT", f"/floatingips/{floating}", {"floatingip": {"port_id": ports[0]["id"]}}
        ).json()
        return str(body["floatingip"]["floating_ip_address"])

    def _free_floating_ip(self) -> str:
        query: dict[str, Any] = {}
        if self.os_params.floating_network:
            query["floating_network_id"] = self._resolve("network", self.os_params.floating_network)
        for ip in self.session.network_get("/floatingips", query).get("floatingips", []):
            if not ip.get("port_id"):
                return str(ip["id"])
        network = query.get("floating_network_id") or self._external_network()
        try:
            body = self.session.network_send(
                "POST", "/floatingips", {"floatingip": {"floating_network_id": network}}
            ).json()
        except CloudFailure as exc:
            if exc.cloud_status == 409:
                raise QuotaExceeded(f"quota exceeded: floating IPs ({exc.detail})") from exc
            raise
        return str(body["floatingip"]["id"])

    def _external_network(self) -> str:
        networks = self.session.network_get("/networks", {"router:external": "true"})
        for network in networks.get("networks", []):
            return str(network["id"])
        raise CenterError("the cloud has no external network for floating IPs")

    # --- power and termination -------------------------------------------------------
    def power(self, machine: MachineInfo, action: PowerAction) -> None:
        self.session.compute_post(f"/servers/{machine.external_id}/action", _ACTIONS[action])

    def terminate(self, machine: MachineInfo) -> None:
        ports = self.session.network_get("/ports", {"device_id": machine.external_id}).get(
            "ports", []
        )
        for port in ports:
            ips = self.session.network_get("/floatingips", {"port_id": port["id"]})
            for ip in ips.get("floatingips", []):
                self.session.network_send("DELETE", f"/floatingips/{ip['id']}")
        try:
            self.session.compute_delete(f"/servers/{machine.external_id}")
        except CloudFailure as exc:
            if exc.cloud_status != 404:
                raise

    def find_tagged(self, tag: str) -> list[MachineInfo]:
        return [
            mapping.machine(s)
            for page, _ in self.session.pages(
                "/servers/detail", "servers", {"limit": 1000, "tags": tag}
            )
            for s in page
        ]

    def leaked(self, known_external_ids: set[str]) -> list[MachineInfo]:
        tagged = self.find_tagged(self.os_params.broker_tag)
        return [m for m in tagged if m.external_id not in known_external_ids]

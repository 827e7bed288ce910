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
    CENTER_KEY,
    BuildLimits,
    Capability,
    CenterDriver,
    Changes,
    ImageInfo,
    MachineInfo,
    PowerAction,
    ProvisionRequest,
    QuotaExceeded,
    UnknownName,
)
from deskbroker.centers.openstack import mapping
from deskbroker.centers.openstack.provision_params import OpenStackProvisionParams
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
# A shelved server comes back with unshelve; os-start answers it with 409.
_UNSHELVE: dict[str, Any] = {"unshelve": None}
_WAKE = (PowerAction.START, PowerAction.RESUME)


def _cursor_from(date_header: str | None) -> str | None:
    if not date_header:
        return None
    try:
        moment = parsedate_to_datetime(date_header)
    except (TypeError, ValueError):
        return None
    return (moment - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


class OpenStackCenter(CenterDriver):
    """One OpenStack project: inventory, images, provisioning, power, leak sweeps."""

    kind: ClassVar[str] = "openstack"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(set(Capability))
    Params: ClassVar[type[BaseModel]] = OpenStackParams
    ProvisionParams: ClassVar[type[BaseModel] | None] = OpenStackProvisionParams

    def __init__(self, params: Mapping[str, Any], secrets: Mapping[str, str]) -> None:
        super().__init__(params, secrets)
        assert isinstance(self.params, OpenStackParams)
        self.os_params: OpenStackParams = self.params
        self.session = ProjectSession(self.os_params, secrets)
        self._names: dict[tuple[str, str], str] = {}

    def belongs_to(self, tenant_id: str) -> None:
        super().belongs_to(tenant_id)
        self.session.owner = tenant_id

    def limits(self) -> BuildLimits:
        return BuildLimits(self.os_params.max_in_flight, self.os_params.build_timeout_s)

    # --- inventory -------------------------------------------------------------------
    def changes(self, since: str | None) -> Changes:
        """Servers changed since ``since`` (all when ``None``), read as raw JSON pages.
        The cursor is the cloud's time when the listing began, less a second, since
        Nova compares ``changes-since`` in whole seconds.

        The full listing asks its first page with no parameter at all: Nova (2.69+)
        stands in for the servers of a cell that does not answer only in a listing with
        no filter, sort or paging asked for (``limit`` included); with one, it leaves
        them out, and the broker could not tell them from deleted ones. The page is
        then Nova's own ``max_limit`` long, and its next link carries the paging on."""
        query: dict[str, Any] = {}
        if since is not None:
            query["changes-since"] = since
            query["limit"] = 1000
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
        raw = self.session.every("/images", "images", {"limit": 500}, service="image")
        return [mapping.image(i) for i in raw]

    def catalog(self) -> dict[str, list[dict[str, Any]]]:
        """What the admin's pickers offer: flavors, networks, zones, security groups."""
        every = self.session.every
        flavors = every("/flavors/detail", "flavors", {}, service="compute")
        zones = self.session.compute_get("/os-availability-zone").get("availabilityZoneInfo", [])
        networks = every("/networks", "networks", {}, service="network")
        groups = every("/security-groups", "security_groups", {}, service="network")
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
        """The id of a flavor, image or network given by id or name, looked up in the
        cloud's whole (paged) list; ``UnknownName`` says which name is missing."""
        if _UUID.match(value):
            return value
        key = (kind, value)
        if key not in self._names:
            every = self.session.every
            if kind == "flavor":
                items = every("/flavors", "flavors", {}, service="compute")
            elif kind == "image":
                items = every("/images", "images", {"name": value}, service="image")
            else:
                items = every("/networks", "networks", {"name": value}, service="network")
            # The filter is only a hint: a cloud may ignore it and answer with everything.
            named = [i for i in items if value in (i.get("name"), i.get("id"))]
            ids = {str(i["id"]) for i in named}
            if not ids:
                raise UnknownName(kind, value)
            if len(ids) > 1:
                raise CenterError(
                    f"{len(ids)} {kind}s are named {value!r} in the cloud: give the id instead"
                )
            self._names[key] = ids.pop()
        return self._names[key]

    def _wanted(self, request: ProvisionRequest) -> OpenStackProvisionParams:
        """The cloud's side of the request: image, flavor, zone, network, floating IP."""
        wanted = self.provision_params(request)
        assert isinstance(wanted, OpenStackProvisionParams)
        return wanted

    def needs_address(self, request: ProvisionRequest) -> bool:
        return self._wanted(request).floating_ip

    def create(self, request: ProvisionRequest) -> str:
        wanted = self._wanted(request)
        if not wanted.image or not wanted.flavor:
            raise CenterError("an OpenStack desktop needs an image and a flavor")
        network = wanted.network or self.os_params.default_network
        compute = self.session.compute
        tags = [self.os_params.broker_tag, *request.tags]
        metadata = {k: str(v)[:255] for k, v in request.metadata.items()}
        # Tags also ride in metadata: clouds before 2.52 take no tags at creation, and
        # the broker checks the instance itself before it adopts or deletes it.
        metadata[mapping.TAGS_KEY] = ",".join(tags)[:255]
        server: dict[str, Any] = {
            "name": request.name,
            "imageRef": self._resolve("image", wanted.image),
            "flavorRef": self._resolve("flavor", wanted.flavor),
            "metadata": metadata,
        }
        if network:
            server["networks"] = [{"uuid": self._resolve("network", network)}]
        elif compute.needs_networks:
            server["networks"] = "auto"
        if compute.tags_on_create:
            server["tags"] = tags
        if wanted.availability_zone:
            server["availability_zone"] = wanted.availability_zone
        if wanted.security_groups:
            server["security_groups"] = [{"name": g} for g in wanted.security_groups]
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
        if not self.needs_address(request):
            # A server whose cell stopped answering shows no addresses; its ports do.
            return self._fixed_address(external_id) if found.partial else found.address
        ports = self._ports_of(external_id)
        if not ports:
            raise CenterError(f"instance {external_id} has no network port for a floating IP")
        return self._allocate_floating_ip(ports[0]["id"])

    def _fixed_address(self, external_id: str) -> str:
        """The instance's fixed address as Neutron holds it (IPv4 first), for when Nova
        cannot say: Neutron answers whatever state Nova's cells are in."""
        found = [
            str(ip.get("ip_address") or "")
            for port in self._ports_of(external_id)
            for ip in port.get("fixed_ips") or []
        ]
        return min((a for a in found if a), key=lambda a: (":" in a, a), default="")

    def _ports_of(self, external_id: str) -> list[dict[str, Any]]:
        """The instance's ports, checked one by one: a cloud that ignores the
        ``device_id`` filter answers with every port of the project."""
        ports = self.session.every("/ports", "ports", {"device_id": external_id}, service="network")
        return [p for p in ports if p.get("device_id") == external_id]

    def _allocate_floating_ip(self, port_id: str) -> str:
        """A new floating IP created already bound to the port, in one call.

        Taking an unbound floating IP of the project and binding it in a second call
        races: two builds (or two brokers) see the same free address and the second
        binding silently moves it, leaving one desktop without an address. The floating
        IPs a desktop holds are released with it, so nothing is left to reuse. A retried
        step (the broker stopped after the cloud bound the address) finds the address the
        port already has; the filter is checked by hand, as some clouds ignore it."""
        bound = self.session.every(
            "/floatingips", "floatingips", {"port_id": port_id}, service="network"
        )
        for ip in bound:
            if ip.get("port_id") == port_id:
                return str(ip["floating_ip_address"])
        query: dict[str, Any] = {}
        if self.os_params.floating_network:
            query["floating_network_id"] = self._resolve("network", self.os_params.floating_network)
        network = query.get("floating_network_id") or self._external_network()
        try:
            body = self.session.network_send(
                "POST",
                "/floatingips",
                {"floatingip": {"floating_network_id": network, "port_id": port_id}},
            ).json()
        except CloudFailure as exc:
            if exc.cloud_status == 409:
                raise QuotaExceeded(f"quota exceeded: floating IPs ({exc.detail})") from exc
            raise
        return str(body["floatingip"]["floating_ip_address"])

    def _external_network(self) -> str:
        networks = self.session.every(
            "/networks", "networks", {"router:external": "true"}, service="network"
        )
        for network in networks:
            if network.get("router:external"):
                return str(network["id"])
        raise CenterError("the cloud has no external network for floating IPs")

    # --- power and termination -------------------------------------------------------
    def power(self, machine: MachineInfo, action: PowerAction) -> None:
        path = f"/servers/{machine.external_id}/action"
        if action in _WAKE and mapping.shelved(machine.driver_state):
            self.session.compute_post(path, _UNSHELVE)
            return
        try:
            self.session.compute_post(path, _ACTIONS[action])
        except CloudFailure as exc:
            if exc.cloud_status != 409 or action not in _WAKE:
                raise
            # Refused: perhaps shelved since the broker last looked.
            current = self.machine(machine.external_id)
            if current is None or not mapping.shelved(current.driver_state):
                raise
            self.session.compute_post(path, _UNSHELVE)

    def rebuild(self, machine: MachineInfo, image: str) -> str:
        """Nova's rebuild action: same server, a new root disk from ``image``; attached
        volumes (a user's data volume) stay attached."""
        image_id = self._resolve("image", image)
        self.session.compute_post(
            f"/servers/{machine.external_id}/action",
            {"rebuild": {"imageRef": image_id}},
            # Not retried blindly: a second rebuild of a server already rebuilding is a
            # 409; the engine watches the machine and asks again if it must.
            idempotent=False,
        )
        return image_id

    def terminate(self, machine: MachineInfo) -> None:
        for port in self._ports_of(machine.external_id):
            ips = self.session.every(
                "/floatingips", "floatingips", {"port_id": port["id"]}, service="network"
            )
            for ip in ips:
                # Only an address on this instance's port is released, whatever the
                # cloud made of the filter.
                if ip.get("port_id") == port["id"]:
                    self.session.network_send("DELETE", f"/floatingips/{ip['id']}")
        try:
            self.session.compute_delete(f"/servers/{machine.external_id}")
        except CloudFailure as exc:
            if exc.cloud_status != 404:
                raise

    def find_tagged(self, tag: str) -> list[MachineInfo]:
        """Servers carrying ``tag``, each checked on the server itself: a cloud that
        ignores the ``tags`` filter (or predates it) answers with every server."""
        query: dict[str, Any] = {"limit": 1000}
        if self.session.compute.tags_on_create:
            query["tags"] = tag
        servers = self.session.every("/servers/detail", "servers", query, service="compute")
        return [mapping.machine(s) for s in servers if mapping.carries(s, tag)]

    def leaked(self, known_external_ids: set[str], *, center_id: str) -> list[MachineInfo]:
        tagged = self.find_tagged(self.os_params.broker_tag)
        built_here = f"meta.{CENTER_KEY}"
        return [
            m
            for m in tagged
            if m.attributes.get(built_here) == center_id and m.external_id not in known_external_ids
        ]

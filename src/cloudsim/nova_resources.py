"""Nova resources around servers: metadata, tags, volume attachments, interfaces, flavors,
availability zones, limits, quotas and keypairs."""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from cloudsim.config import normalize_quota
from cloudsim.core import AuthContext, Core
from cloudsim.lifecycle import ATTACHABLE_VM_STATES
from cloudsim.novaview import ServerViews, flavor_view
from cloudsim.state import Attachment, CloudState, Keypair, Server
from cloudsim.web import (
    ApiError,
    Request,
    Response,
    Router,
    empty,
    iso,
    json_response,
    paginate,
)

MAX_TAGS = 50
_NOVA_QUOTAS = (
    "instances",
    "cores",
    "ram",
    "key_pairs",
    "metadata_items",
    "server_groups",
    "server_group_members",
)


def check_tags(tags: Any) -> list[str]:
    """Validate a server tag list as Nova does (≤50 tags, ≤60 chars, no '/' or ',')."""
    if not isinstance(tags, list):
        raise ApiError(400, f"Invalid input for field/attribute tags. Value: {tags}.")
    if len(tags) > MAX_TAGS:
        raise ApiError(400, f"The number of tags exceeded the per-server limit {MAX_TAGS}")
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str) or not 1 <= len(tag) <= 60 or "/" in tag or "," in tag:
            raise ApiError(400, f"Invalid input for field/attribute tags. Value: {tag}.")
        if tag not in out:
            out.append(tag)
    return out


class NovaResources:
    """Mixed into the Nova service; relies on its core, state, views and router."""

    core: Core
    state: CloudState
    views: ServerViews
    router: Router

    def server_of(self, req: Request) -> Server:
        """The server named in the path (implemented by the service)."""
        raise NotImplementedError

    def register_resources(self) -> None:
        """Add the routes of this module."""
        add = self.router.add
        sid = "/v2.1/servers/{server_id}"
        add("GET", sid + "/metadata", self.get_metadata)
        add("PUT", sid + "/metadata", lambda req: self.set_metadata(req, replace=True))
        add("POST", sid + "/metadata", lambda req: self.set_metadata(req, replace=False))
        add("GET", sid + "/metadata/{key}", self.get_meta_item)
        add("PUT", sid + "/metadata/{key}", self.set_meta_item)
        add("DELETE", sid + "/metadata/{key}", self.delete_meta_item)
        add("GET", sid + "/tags", self.get_tags)
        add("PUT", sid + "/tags", self.replace_tags)
        add("DELETE", sid + "/tags", self.clear_tags)
        add("GET", sid + "/tags/{tag}", self.check_tag)
        add("PUT", sid + "/tags/{tag}", self.add_tag)
        add("DELETE", sid + "/tags/{tag}", self.delete_tag)
        add("GET", sid + "/os-volume_attachments", self.list_attachments)
        add("POST", sid + "/os-volume_attachments", self.attach)
        add("GET", sid + "/os-volume_attachments/{volume_id}", self.get_attachment)
        add("DELETE", sid + "/os-volume_attachments/{volume_id}", self.detach)
        add("GET", sid + "/os-interface", self.interfaces)
        add("GET", sid + "/ips", self.ips)
        add("GET", "/v2.1/flavors", lambda req: self.list_flavors(req, detail=False))
        add("GET", "/v2.1/flavors/detail", lambda req: self.list_flavors(req, detail=True))
        add("GET", "/v2.1/flavors/{flavor_id}", self.get_flavor)
        add("GET", "/v2.1/flavors/{flavor_id}/os-extra_specs", self.flavor_specs)
        add("GET", "/v2.1/os-availability-zone", lambda req: self.zones(req, detail=False))
        add("GET", "/v2.1/os-availability-zone/detail", lambda req: self.zones(req, detail=True))
        add("GET", "/v2.1/limits", self.limits)
        add("GET", "/v2.1/os-quota-sets/{project_id}", lambda req: self.quotas(req, "plain"))
        add(
            "GET", "/v2.1/os-quota-sets/{project_id}/detail", lambda req: self.quotas(req, "detail")
        )
        add(
            "GET",
            "/v2.1/os-quota-sets/{project_id}/defaults",
            lambda req: self.quotas(req, "defaults"),
        )
        add("PUT", "/v2.1/os-quota-sets/{project_id}", self.update_quotas)
        add("GET", "/v2.1/os-keypairs", self.list_keypairs)
        add("POST", "/v2.1/os-keypairs", self.create_keypair)
        add("GET", "/v2.1/os-keypairs/{name}", self.get_keypair)
        add("DELETE", "/v2.1/os-keypairs/{name}", self.delete_keypair)

    # -- metadata -----------------------------------------------------------------------
    def _meta_body(self, req: Request, key: str) -> dict[str, str]:
        body = req.json_object()
        value = body.get(key)
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 255 and len(v) <= 255
            for k, v in value.items()
        ):
            raise ApiError(400, f"Invalid input for field/attribute {key}.")
        return value

    def _check_meta_quota(self, server: Server, items: dict[str, str]) -> None:
        allowed = self.state.quota_of(server.project_id)["metadata_items"]
        if 0 <= allowed < len(items):
            raise ApiError(
                403,
                f"Quota exceeded for metadata_items: Requested {len(items)}, "
                f"but already used 0 of {allowed} metadata_items",
            )

    def get_metadata(self, req: Request) -> Response:
        """GET /servers/{id}/metadata."""
        return json_response(200, {"metadata": dict(self.server_of(req).metadata)})

    def set_metadata(self, req: Request, *, replace: bool) -> Response:
        """PUT replaces, POST merges server metadata."""
        server = self.server_of(req)
        items = self._meta_body(req, "metadata")
        merged = dict(items) if replace else {**server.metadata, **items}
        self._check_meta_quota(server, merged)
        server.metadata = merged
        server.touch()
        return json_response(200, {"metadata": dict(merged)})

    def get_meta_item(self, req: Request) -> Response:
        """GET /servers/{id}/metadata/{key}."""
        server = self.server_of(req)
        key = req.params["key"]
        if key not in server.metadata:
            raise ApiError(404, "Metadata item was not found")
        return json_response(200, {"meta": {key: server.metadata[key]}})

    def set_meta_item(self, req: Request) -> Response:
        """PUT /servers/{id}/metadata/{key}."""
        server = self.server_of(req)
        item = self._meta_body(req, "meta")
        key = req.params["key"]
        if list(item) != [key]:
            raise ApiError(400, "Request body and URI mismatch")
        merged = {**server.metadata, **item}
        self._check_meta_quota(server, merged)
        server.metadata = merged
        server.touch()
        return json_response(200, {"meta": item})

    def delete_meta_item(self, req: Request) -> Response:
        """DELETE /servers/{id}/metadata/{key}."""
        server = self.server_of(req)
        if server.metadata.pop(req.params["key"], None) is None:
            raise ApiError(404, "Metadata item was not found")
        server.touch()
        return empty(204)

    # -- tags (2.26+) -------------------------------------------------------------------
    def _tag_server(self, req: Request, writing: bool) -> Server:
        if req.microversion[1] < 26:
            raise ApiError(404, "The resource could not be found.")
        server = self.server_of(req)
        if writing and (server.vm_state == "error" or server.task_state == "deleting"):
            state = (
                f"task_state {server.task_state}"
                if server.task_state
                else f"vm_state {server.vm_state}"
            )
            raise ApiError(409, f"Cannot 'update tags' instance {server.id} while it is in {state}")
        return server

    def get_tags(self, req: Request) -> Response:
        """GET /servers/{id}/tags."""
        return json_response(200, {"tags": list(self._tag_server(req, False).tags)})

    def replace_tags(self, req: Request) -> Response:
        """PUT /servers/{id}/tags."""
        server = self._tag_server(req, True)
        server.tags = check_tags(req.json_object().get("tags"))
        server.touch()
        return json_response(200, {"tags": list(server.tags)})

    def clear_tags(self, req: Request) -> Response:
        """DELETE /servers/{id}/tags."""
        server = self._tag_server(req, True)
        server.tags = []
        server.touch()
        return empty(204)

    def check_tag(self, req: Request) -> Response:
        """GET /servers/{id}/tags/{tag}: 204 or 404."""
        server = self._tag_server(req, False)
        if req.params["tag"] not in server.tags:
            raise ApiError(
                404, f"Tag {req.params['tag']} could not be found for instance {server.id}"
            )
        return empty(204)

    def add_tag(self, req: Request) -> Response:
        """PUT /servers/{id}/tags/{tag}: 201 when new, 204 when already there."""
        server = self._tag_server(req, True)
        tag = req.params["tag"]
        if tag in server.tags:
            return empty(204)
        server.tags = check_tags([*server.tags, tag])
        server.touch()
        location = f"{self.core.base_url}/compute/v2.1/servers/{server.id}/tags/{tag}"
        return empty(201, {"Location": location})

    def delete_tag(self, req: Request) -> Response:
        """DELETE /servers/{id}/tags/{tag}."""
        server = self._tag_server(req, True)
        tag = req.params["tag"]
        if tag not in server.tags:
            raise ApiError(404, f"Tag {tag} could not be found for instance {server.id}")
        server.tags = [t for t in server.tags if t != tag]
        server.touch()
        return empty(204)

    # -- volume attachments -------------------------------------------------------------
    def _attachment_view(self, att: Attachment, minor: int) -> dict[str, Any]:
        view: dict[str, Any] = {
            "device": att.device,
            "serverId": att.server_id,
            "volumeId": att.volume_id,
        }
        if minor < 89:
            view["id"] = att.volume_id
        else:
            view["attachment_id"] = att.id
            view["bdm_uuid"] = att.id
        if minor >= 70:
            view["tag"] = att.tag
        if minor >= 79:
            view["delete_on_termination"] = att.delete_on_termination
        return view

    def list_attachments(self, req: Request) -> Response:
        """GET /servers/{id}/os-volume_attachments."""
        server = self.server_of(req)
        return json_response(
            200,
            {
                "volumeAttachments": [
                    self._attachment_view(a, req.microversion[1]) for a in server.attachments
                ]
            },
        )

    def _find_attachment(self, req: Request) -> tuple[Server, Attachment]:
        server = self.server_of(req)
        volume_id = req.params["volume_id"]
        att = next((a for a in server.attachments if a.volume_id == volume_id), None)
        if att is None:
            raise ApiError(404, f"Volume {volume_id} is not attached to {server.id}")
        return server, att

    def get_attachment(self, req: Request) -> Response:
        """GET /servers/{id}/os-volume_attachments/{volume_id}."""
        _, att = self._find_attachment(req)
        return json_response(
            200, {"volumeAttachment": self._attachment_view(att, req.microversion[1])}
        )

    def attach(self, req: Request) -> Response:
        """POST /servers/{id}/os-volume_attachments: the volume goes attaching → in-use."""
        server = self.server_of(req)
        body = req.json_object("volumeAttachment")
        volume = self.state.volumes.get(str(body.get("volumeId", "")))
        if volume is None or volume.project_id != server.project_id:
            raise ApiError(404, f"Volume {body.get('volumeId')} could not be found.")
        if server.vm_state not in ATTACHABLE_VM_STATES or server.task_state is not None:
            attr, value = (
                ("task_state", server.task_state)
                if server.task_state
                else ("vm_state", server.vm_state)
            )
            raise ApiError(
                409, f"Cannot 'attach_volume' instance {server.id} while it is in {attr} {value}"
            )
        if volume.status != "available":
            raise ApiError(
                400,
                f"Invalid volume: volume '{volume.id}' status must be "
                f"'available'. Currently in '{volume.status}'",
            )
        used = {a.device for a in server.attachments}
        device = next(
            f"/dev/vd{c}" for c in "bcdefghijklmnopqrstuvwxyz" if f"/dev/vd{c}" not in used
        )
        att = self.core.lifecycle.attach(
            server, volume, device, bool(body.get("delete_on_termination", False)), body.get("tag")
        )
        return json_response(
            200, {"volumeAttachment": self._attachment_view(att, req.microversion[1])}
        )

    def detach(self, req: Request) -> Response:
        """DELETE /servers/{id}/os-volume_attachments/{volume_id} → 202."""
        server, att = self._find_attachment(req)
        if att.device == "/dev/vda":
            raise ApiError(400, "Cannot detach a root device volume")
        if server.task_state is not None:
            raise ApiError(
                409,
                f"Cannot 'detach_volume' instance {server.id} while it is in "
                f"task_state {server.task_state}",
            )
        self.core.lifecycle.detach(server, att)
        return empty(202)

    # -- interfaces and ips --------------------------------------------------------------
    def interfaces(self, req: Request) -> Response:
        """GET /servers/{id}/os-interface: the server's Neutron ports."""
        server = self.server_of(req)
        out = []
        for port in self.state.ports_by_device.get(server.id, ()):
            item: dict[str, Any] = {
                "port_state": port.status,
                "port_id": port.id,
                "net_id": port.network_id,
                "mac_addr": port.mac,
                "fixed_ips": [{"subnet_id": port.subnet_id, "ip_address": port.ip}],
            }
            if req.microversion[1] >= 70:
                item["tag"] = None
            out.append(item)
        return json_response(200, {"interfaceAttachments": out})

    def ips(self, req: Request) -> Response:
        """GET /servers/{id}/ips."""
        server = self.server_of(req)
        addresses = self.views.addresses(server)
        return json_response(
            200,
            {
                "addresses": {
                    net: [{"version": a["version"], "addr": a["addr"]} for a in entries]
                    for net, entries in addresses.items()
                }
            },
        )

    # -- flavors ------------------------------------------------------------------------
    def list_flavors(self, req: Request, *, detail: bool) -> Response:
        """GET /flavors and /flavors/detail with minDisk/minRam filters and paging."""
        flavors = list(self.state.flavors.values())
        min_disk, min_ram = req.arg("minDisk"), req.arg("minRam")
        if min_disk and min_disk.isdigit():
            flavors = [f for f in flavors if f.disk >= int(min_disk)]
        if min_ram and min_ram.isdigit():
            flavors = [f for f in flavors if f.ram >= int(min_ram)]
        cap = self.core.max_limit("compute") or 1000
        page, full = paginate(flavors, req, key=lambda f: f.id, default_limit=cap, max_limit=cap)
        base, minor = self.core.base_url, req.microversion[1]
        body: dict[str, Any] = {"flavors": [flavor_view(base, f, minor, detail) for f in page]}
        if full:
            path = "flavors/detail" if detail else "flavors"
            body["flavors_links"] = [
                {"rel": "next", "href": f"{base}/compute/v2.1/{path}?marker={page[-1].id}"}
            ]
        return json_response(200, body)

    def _flavor(self, req: Request) -> Any:
        flavor = self.state.flavors.get(req.params["flavor_id"])
        if flavor is None:
            raise ApiError(404, f"Flavor {req.params['flavor_id']} could not be found.")
        return flavor

    def get_flavor(self, req: Request) -> Response:
        """GET /flavors/{id}."""
        return json_response(
            200,
            {
                "flavor": flavor_view(
                    self.core.base_url, self._flavor(req), req.microversion[1], True
                )
            },
        )

    def flavor_specs(self, req: Request) -> Response:
        """GET /flavors/{id}/os-extra_specs."""
        return json_response(200, {"extra_specs": dict(self._flavor(req).extra_specs)})

    # -- availability zones, limits, quotas --------------------------------------------
    def zones(self, req: Request, *, detail: bool) -> Response:
        """GET /os-availability-zone[/detail]."""
        now = iso(time.time())
        zones = []
        for zone in self.core.config.availability_zones:
            hosts = None
            if detail:
                hosts = {
                    "compute-0": {
                        "nova-compute": {"available": True, "active": True, "updated_at": now}
                    }
                }
            zones.append({"zoneName": zone, "zoneState": {"available": True}, "hosts": hosts})
        return json_response(200, {"availabilityZoneInfo": zones})

    def limits(self, req: Request) -> Response:
        """GET /limits: absolute limits and usage of the caller's project."""
        ctx: AuthContext = req.auth
        project_id = ctx.project_id
        quota = self.state.quota_of(project_id)
        usage = self.state.usage_of(project_id)
        absolute: dict[str, int] = {
            "maxServerMeta": quota["metadata_items"],
            "maxImageMeta": 128,
            "maxTotalKeypairs": quota["key_pairs"],
            "maxServerGroups": quota["server_groups"],
            "maxServerGroupMembers": quota["server_group_members"],
            "maxTotalCores": quota["cores"],
            "maxTotalInstances": quota["instances"],
            "maxTotalRAMSize": quota["ram"],
            "totalCoresUsed": usage["cores"],
            "totalInstancesUsed": usage["instances"],
            "totalRAMUsed": usage["ram"],
            "totalServerGroupsUsed": 0,
        }
        if req.microversion[1] < 57:
            absolute.update({"maxPersonality": 5, "maxPersonalitySize": 10240})
        if req.microversion[1] < 36:
            fips = sum(1 for f in self.state.floating_ips.values() if f.project_id == project_id)
            absolute.update(
                {
                    "maxSecurityGroups": quota["security_group"],
                    "maxSecurityGroupRules": quota["security_group_rule"],
                    "maxTotalFloatingIps": quota["floatingip"],
                    "totalFloatingIpsUsed": fips,
                    "totalSecurityGroupsUsed": 1,
                }
            )
        return json_response(200, {"limits": {"rate": [], "absolute": absolute}})

    def _quota_project(self, req: Request) -> str:
        ctx: AuthContext = req.auth
        project_id = req.params["project_id"]
        if project_id not in self.state.projects:
            raise ApiError(404, f"Project {project_id} could not be found.")
        if not ctx.is_admin and project_id != ctx.project_id:
            raise ApiError(
                403, "Policy doesn't allow os_compute_api:os-quota-sets:show to be performed."
            )
        return project_id

    def quotas(self, req: Request, kind: str) -> Response:
        """GET /os-quota-sets/{project}[/detail|/defaults]."""
        project_id = self._quota_project(req)
        quota = self.state.default_quota if kind == "defaults" else self.state.quota_of(project_id)
        usage = self.state.usage_of(project_id)
        body: dict[str, Any] = {"id": project_id}
        for name in _NOVA_QUOTAS:
            if kind == "detail":
                body[name] = {"limit": quota[name], "in_use": usage.get(name, 0), "reserved": 0}
            else:
                body[name] = quota[name]
        return json_response(200, {"quota_set": body})

    def update_quotas(self, req: Request) -> Response:
        """PUT /os-quota-sets/{project} (admin only)."""
        ctx: AuthContext = req.auth
        if not ctx.is_admin:
            raise ApiError(
                403, "Policy doesn't allow os_compute_api:os-quota-sets:update to be performed."
            )
        project_id = self._quota_project(req)
        values = req.json_object("quota_set")
        try:
            updates = normalize_quota(
                {k: int(v) for k, v in values.items() if k not in ("force", "id")}
            )
        except (TypeError, ValueError) as exc:
            raise ApiError(400, str(exc)) from exc
        self.state.projects[project_id].quota.update(updates)
        quota = self.state.quota_of(project_id)
        return json_response(200, {"quota_set": {n: quota[n] for n in _NOVA_QUOTAS}})

    # -- keypairs -----------------------------------------------------------------------
    def _keypair_view(self, pair: Keypair, minor: int, full: bool) -> dict[str, Any]:
        view: dict[str, Any] = {
            "name": pair.name,
            "public_key": pair.public_key,
            "fingerprint": pair.fingerprint,
        }
        if minor >= 2:
            view["type"] = pair.type
        if full:
            view.update(
                {
                    "user_id": pair.user_id,
                    "created_at": iso(pair.created),
                    "deleted": False,
                    "deleted_at": None,
                    "updated_at": None,
                    "id": abs(hash(pair.name)) % 100000,
                }
            )
        return view

    def list_keypairs(self, req: Request) -> Response:
        """GET /os-keypairs."""
        ctx: AuthContext = req.auth
        pairs = [
            {"keypair": self._keypair_view(p, req.microversion[1], False)}
            for (user_id, _), p in self.state.keypairs.items()
            if user_id == ctx.user.id
        ]
        return json_response(200, {"keypairs": pairs})

    def create_keypair(self, req: Request) -> Response:
        """POST /os-keypairs: import a public key (or get a generated fake one before 2.92)."""
        ctx: AuthContext = req.auth
        body = req.json_object("keypair")
        name = body.get("name")
        if not isinstance(name, str) or not name or len(name) > 255:
            raise ApiError(400, "Invalid input for field/attribute name.")
        if (ctx.user.id, name) in self.state.keypairs:
            raise ApiError(409, f"Key pair '{name}' already exists.")
        public = body.get("public_key")
        private = None
        if not public:
            if req.microversion[1] >= 92:
                raise ApiError(400, "'public_key' is a required property")
            public = (
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"
                + secrets.token_hex(16)
                + " cloudsim-generated"
            )
            private = (
                "-----BEGIN OPENSSH PRIVATE KEY-----\n(simulated)\n"
                "-----END OPENSSH PRIVATE KEY-----\n"
            )
        digest = hashlib.md5(str(public).encode(), usedforsecurity=False).hexdigest()
        pair = Keypair(
            name,
            ctx.user.id,
            str(public),
            ":".join(digest[i : i + 2] for i in range(0, 32, 2)),
            time.time(),
            str(body.get("type", "ssh")),
        )
        self.state.keypairs[(ctx.user.id, name)] = pair
        view = self._keypair_view(pair, req.microversion[1], False)
        view["user_id"] = ctx.user.id
        if private:
            view["private_key"] = private
        return json_response(201 if req.microversion[1] >= 2 else 200, {"keypair": view})

    def _keypair(self, req: Request) -> Keypair:
        ctx: AuthContext = req.auth
        pair = self.state.keypairs.get((ctx.user.id, req.params["name"]))
        if pair is None:
            raise ApiError(404, f"Keypair {req.params['name']} not found for user {ctx.user.id}")
        return pair

    def get_keypair(self, req: Request) -> Response:
        """GET /os-keypairs/{name}."""
        return json_response(
            200, {"keypair": self._keypair_view(self._keypair(req), req.microversion[1], True)}
        )

    def delete_keypair(self, req: Request) -> Response:
        """DELETE /os-keypairs/{name}."""
        pair = self._keypair(req)
        del self.state.keypairs[(pair.user_id, pair.name)]
        return empty(204 if req.microversion[1] >= 2 else 202)

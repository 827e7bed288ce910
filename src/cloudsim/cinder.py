"""Cinder v3: volumes (create, list, get, update, delete), types, zones, quotas."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from cloudsim.core import AuthContext, Service, stable_id
from cloudsim.novaview import microversion_headers, parse_microversion
from cloudsim.state import Volume
from cloudsim.web import ApiError, Request, Response, empty, iso, json_response, paginate

MIN_VERSION = (3, 0)
MAX_VERSION = (3, 71)
_DELETABLE = {"available", "error", "error_restoring", "error_extending", "error_managing"}
_VOLUME_TYPES = ("lvmdriver-1", "__DEFAULT__")


class Cinder(Service):
    """The block storage service under /volume (project id in the path is optional)."""

    name = "block-storage"
    prefix = "/volume"

    def register(self) -> None:
        """Add the Cinder routes, each with and without the legacy project id segment."""
        add = self.router.add
        add("GET", "", self.versions)
        add("GET", "/v3", self.version)
        for root in ("/v3", "/v3/{project_id}"):
            add("GET", root + "/volumes", lambda req: self.list_volumes(req, detail=False))
            add("GET", root + "/volumes/detail", lambda req: self.list_volumes(req, detail=True))
            add("POST", root + "/volumes", self.create)
            add("GET", root + "/volumes/{volume_id}", self.show)
            add("PUT", root + "/volumes/{volume_id}", self.update)
            add("DELETE", root + "/volumes/{volume_id}", self.delete)
            add("GET", root + "/types", self.types)
            add("GET", root + "/os-availability-zone", self.zones)
            add("GET", root + "/os-quota-sets/{quota_project}", self.quotas)
            add("GET", root + "/limits", self.limits)

    def is_public(self, req: Request) -> bool:
        """Version documents need no token."""
        return req.method == "GET" and req.path.rstrip("/") in ("/volume", "/volume/v3")

    def prepare(self, req: Request) -> None:
        """Negotiate the volume microversion."""
        req.microversion = parse_microversion(req, "volume", None, MIN_VERSION, MAX_VERSION)

    def finish(self, req: Request, resp: Response) -> None:
        """Echo the negotiated microversion."""
        if req.microversion != (0, 0):
            resp.headers.update(microversion_headers("volume", req.microversion, None))

    def _version_doc(self) -> dict[str, Any]:
        return {
            "id": "v3.0",
            "status": "CURRENT",
            "version": f"{MAX_VERSION[0]}.{MAX_VERSION[1]}",
            "min_version": f"{MIN_VERSION[0]}.{MIN_VERSION[1]}",
            "updated": "2023-08-31T00:00:00Z",
            "links": [{"rel": "self", "href": f"{self.core.base_url}/volume/v3/"}],
            "media-types": [
                {
                    "base": "application/json",
                    "type": "application/vnd.openstack.volume+json;version=3",
                }
            ],
        }

    def versions(self, req: Request) -> Response:
        """GET /volume/."""
        return json_response(300, {"versions": [self._version_doc()]})

    def version(self, req: Request) -> Response:
        """GET /volume/v3/."""
        return json_response(200, {"versions": [self._version_doc()]})

    # -- views --------------------------------------------------------------------------
    def view(self, volume: Volume) -> dict[str, Any]:
        """A volume as Cinder shows it."""
        base = f"{self.core.base_url}/volume/v3/{volume.project_id}/volumes/{volume.id}"
        attachments = []
        att = volume.attachment
        if att is not None and volume.status in ("in-use", "detaching"):
            server = self.state.servers.get(att.server_id)
            attachments.append(
                {
                    "id": volume.id,
                    "attachment_id": att.id,
                    "volume_id": volume.id,
                    "server_id": att.server_id,
                    "host_name": server.host if server else None,
                    "device": att.device,
                    "attached_at": iso(att.attached_at),
                }
            )
        metadata = dict(volume.metadata)
        if attachments:
            metadata.setdefault("attached_mode", "rw")
        return {
            "id": volume.id,
            "name": volume.name,
            "description": volume.description,
            "status": volume.status,
            "size": volume.size,
            "availability_zone": volume.availability_zone,
            "created_at": iso(volume.created),
            "updated_at": iso(volume.updated),
            "attachments": attachments,
            "bootable": "true" if volume.image_id else "false",
            "encrypted": False,
            "multiattach": False,
            "metadata": metadata,
            "volume_type": volume.volume_type,
            "volume_type_id": stable_id("volume-type", volume.volume_type),
            "user_id": volume.user_id,
            "os-vol-tenant-attr:tenant_id": volume.project_id,
            "snapshot_id": None,
            "source_volid": None,
            "replication_status": None,
            "consistencygroup_id": None,
            "group_id": None,
            "provider_id": None,
            "service_uuid": None,
            "shared_targets": True,
            "cluster_name": None,
            "consumes_quota": True,
            "volume_image_metadata": {"image_id": volume.image_id} if volume.image_id else {},
            "links": [{"rel": "self", "href": base}, {"rel": "bookmark", "href": base}],
        }

    def _volume(self, req: Request) -> Volume:
        ctx: AuthContext = req.auth
        volume = self.state.volumes.get(req.params["volume_id"])
        if volume is None or (volume.project_id != ctx.project_id and not ctx.is_admin):
            raise ApiError(404, f"Volume {req.params['volume_id']} could not be found.")
        return volume

    # -- handlers -----------------------------------------------------------------------
    def list_volumes(self, req: Request, *, detail: bool) -> Response:
        """GET /volumes[/detail] with name/status filters and limit/marker paging."""
        ctx: AuthContext = req.auth
        volumes = [v for v in self.state.volumes.values() if v.project_id == ctx.project_id]
        for field in () if self.core.ignore_filters else ("name", "status", "availability_zone"):
            wanted = req.arg(field)
            if wanted:
                volumes = [v for v in volumes if getattr(v, field) == wanted]
        volumes.sort(key=lambda v: (v.created, v.id), reverse=True)
        cap = self.core.max_limit("volume") or 1000
        page, full = paginate(volumes, req, key=lambda v: v.id, default_limit=cap, max_limit=cap)
        if detail:
            items = [self.view(v) for v in page]
        else:
            items = [{"id": v.id, "name": v.name, "links": self.view(v)["links"]} for v in page]
        body: dict[str, Any] = {"volumes": items}
        if full:
            params = [(k, v) for k, vals in req.query.items() if k != "marker" for v in vals] + [
                ("marker", page[-1].id)
            ]
            path = "volumes/detail" if detail else "volumes"
            body["volumes_links"] = [
                {
                    "rel": "next",
                    "href": f"{self.core.base_url}/volume/v3/{path}?{urlencode(params)}",
                }
            ]
        return json_response(200, body)

    def create(self, req: Request) -> Response:
        """POST /volumes → 202, status creating then available; 413 over quota."""
        ctx: AuthContext = req.auth
        body = req.json_object("volume")
        size = body.get("size")
        if not isinstance(size, int) or size < 1:
            raise ApiError(400, "Invalid input received: 'size' must be a positive integer.")
        az = body.get("availability_zone") or self.core.config.availability_zones[0]
        if az not in self.core.config.availability_zones:
            raise ApiError(400, f"Invalid input received: Availability zone '{az}' is invalid.")
        image_id = body.get("imageRef")
        if image_id is not None and image_id not in self.state.images:
            raise ApiError(
                400,
                f"Invalid image identifier or unable to access requested "
                f"image. (image {image_id} could not be found)",
            )
        volume_type = body.get("volume_type")
        if volume_type is not None and volume_type not in _VOLUME_TYPES:
            raise ApiError(404, f"Volume type with name {volume_type} could not be found.")
        metadata = body.get("metadata") or {}
        volume = self.core.new_volume(
            ctx.project_id,
            ctx.user.id,
            size,
            az,
            body.get("name"),
            image_id=image_id,
            description=body.get("description"),
            volume_type=volume_type,
            metadata={str(k): str(v) for k, v in metadata.items()},
        )
        return json_response(202, {"volume": self.view(volume)})

    def show(self, req: Request) -> Response:
        """GET /volumes/{id}."""
        return json_response(200, {"volume": self.view(self._volume(req))})

    def update(self, req: Request) -> Response:
        """PUT /volumes/{id}: name, description, metadata."""
        volume = self._volume(req)
        body = req.json_object("volume")
        if "name" in body:
            volume.name = body["name"]
        if "description" in body:
            volume.description = body["description"]
        if isinstance(body.get("metadata"), dict):
            volume.metadata = {str(k): str(v) for k, v in body["metadata"].items()}
        return json_response(200, {"volume": self.view(volume)})

    def delete(self, req: Request) -> Response:
        """DELETE /volumes/{id} → 202; attached volumes are a 400 as in Cinder."""
        volume = self._volume(req)
        if volume.status not in _DELETABLE or volume.attachment is not None:
            raise ApiError(
                400,
                "Invalid volume: Volume status must be available or error or "
                "error_restoring or error_extending or error_managing and must "
                "not be migrating, attached, belong to a group, have "
                "snapshots, awaiting a transfer, or be disassociated from "
                "snapshots after volume transfer.",
            )
        volume.status = "deleting"
        self.core.lifecycle.volume_later(volume, "deleted")
        return empty(202)

    def types(self, req: Request) -> Response:
        """GET /types."""
        return json_response(
            200,
            {
                "volume_types": [
                    {
                        "id": stable_id("volume-type", t),
                        "name": t,
                        "is_public": True,
                        "description": None,
                        "extra_specs": {},
                        "qos_specs_id": None,
                    }
                    for t in _VOLUME_TYPES
                ]
            },
        )

    def zones(self, req: Request) -> Response:
        """GET /os-availability-zone."""
        return json_response(
            200,
            {
                "availabilityZoneInfo": [
                    {"zoneName": z, "zoneState": {"available": True}}
                    for z in self.core.config.availability_zones
                ]
            },
        )

    def _usage(self, project_id: str) -> tuple[int, int]:
        mine = [v for v in self.state.volumes.values() if v.project_id == project_id]
        return len(mine), sum(v.size for v in mine)

    def quotas(self, req: Request) -> Response:
        """GET /os-quota-sets/{project}[?usage=true]."""
        ctx: AuthContext = req.auth
        project_id = req.params["quota_project"]
        if project_id != ctx.project_id and not ctx.is_admin:
            raise ApiError(403, "Policy doesn't allow volume_extension:quotas:show.")
        quota = self.state.quota_of(project_id)
        count, gigabytes = self._usage(project_id)
        body: dict[str, Any] = {"id": project_id}
        if req.arg("usage") in ("true", "True", "1"):
            body.update(
                {
                    "volumes": {
                        "limit": quota["volumes"],
                        "in_use": count,
                        "reserved": 0,
                        "allocated": 0,
                    },
                    "gigabytes": {
                        "limit": quota["gigabytes"],
                        "in_use": gigabytes,
                        "reserved": 0,
                        "allocated": 0,
                    },
                    "snapshots": {
                        "limit": quota["snapshots"],
                        "in_use": 0,
                        "reserved": 0,
                        "allocated": 0,
                    },
                }
            )
        else:
            body.update(
                {
                    "volumes": quota["volumes"],
                    "gigabytes": quota["gigabytes"],
                    "snapshots": quota["snapshots"],
                    "backups": 10,
                    "backup_gigabytes": 1000,
                    "per_volume_gigabytes": -1,
                    "groups": 10,
                }
            )
        return json_response(200, {"quota_set": body})

    def limits(self, req: Request) -> Response:
        """GET /limits."""
        ctx: AuthContext = req.auth
        quota = self.state.quota_of(ctx.project_id)
        count, gigabytes = self._usage(ctx.project_id)
        return json_response(
            200,
            {
                "limits": {
                    "rate": [],
                    "absolute": {
                        "maxTotalVolumes": quota["volumes"],
                        "maxTotalVolumeGigabytes": quota["gigabytes"],
                        "maxTotalSnapshots": quota["snapshots"],
                        "maxTotalBackups": 10,
                        "maxTotalBackupGigabytes": 1000,
                        "totalVolumesUsed": count,
                        "totalGigabytesUsed": gigabytes,
                        "totalSnapshotsUsed": 0,
                        "totalBackupsUsed": 0,
                        "totalBackupGigabytesUsed": 0,
                    },
                }
            },
        )

"""Nova server creation: validation, quota, networks, block devices, build faults."""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Any

from cloudsim.core import AuthContext, Core
from cloudsim.lifecycle import NetworkRequest, ServerSpec, VolumeRequest
from cloudsim.nova_resources import check_tags
from cloudsim.novaview import ServerViews
from cloudsim.state import CloudState, Image
from cloudsim.web import ApiError, Request, Response, json_response


def ref_id(value: Any) -> str:
    """Flavor and image refs may be ids or full URLs; Nova takes the last segment."""
    return str(value).rstrip("/").rsplit("/", 1)[-1]


class NovaCreate:
    """POST /servers, mixed into the Nova service."""

    core: Core
    state: CloudState
    views: ServerViews

    @staticmethod
    def _valid_name(value: Any) -> str:
        if not isinstance(value, str) or not value.strip() or len(value) > 255:
            raise ApiError(400, f"Invalid input for field/attribute name. Value: {value}.")
        return value

    def create(self, req: Request) -> Response:
        """POST /servers → 202 without status; quota exceeded is 403."""
        ctx: AuthContext = req.auth
        project_id = ctx.project_id
        minor = req.microversion[1]
        body = req.json_object("server")
        name = self._valid_name(body.get("name"))
        flavor = self.state.flavors.get(ref_id(body.get("flavorRef", "")))
        if flavor is None:
            raise ApiError(400, f"Flavor {body.get('flavorRef')} could not be found.")
        for field_name, since in (("tags", 52), ("description", 19), ("hostname", 90)):
            if field_name in body and minor < since:
                raise ApiError(
                    400,
                    "Invalid input for field/attribute server. Additional "
                    f"properties are not allowed ('{field_name}' was "
                    "unexpected)",
                )
        networks = self._networks(body, minor, project_id)
        az = body.get("availability_zone") or self.core.config.availability_zones[0]
        if az not in self.core.config.availability_zones:
            raise ApiError(400, "The requested availability zone is not available")
        image, volumes = self._boot_source(body, req, flavor.disk, az)
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise ApiError(400, "Invalid input for field/attribute metadata.")
        if len(metadata) > self.state.quota_of(project_id)["metadata_items"]:
            raise ApiError(
                403,
                "Quota exceeded for metadata_items: Requested "
                f"{len(metadata)}, but already used 0 of "
                f"{self.state.quota_of(project_id)['metadata_items']} "
                "metadata_items",
            )
        tags = check_tags(body.get("tags") or [])
        user_data = body.get("user_data")
        if user_data is not None:
            try:
                base64.b64decode(str(user_data), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ApiError(400, "User data needs to be valid base 64.") from exc
        key_name = body.get("key_name")
        if key_name is not None and (ctx.user.id, key_name) not in self.state.keypairs:
            raise ApiError(400, "Invalid key_name provided.")
        groups = self._security_groups(body, project_id)
        min_count = int(body.get("min_count", 1))
        max_count = int(body.get("max_count", min_count))
        if min_count < 1 or max_count < min_count:
            raise ApiError(400, "min_count must be <= max_count and at least 1")
        count = self._quota_count(project_id, flavor.vcpus, flavor.ram, min_count, max_count)
        if volumes and count > 1:
            raise ApiError(400, "Cannot attach one or more volumes to multiple instances")
        fault = self.core.faults.match_build(req.path, name)
        spec = ServerSpec(
            project_id=project_id,
            user_id=ctx.user.id,
            name=name,
            flavor=flavor,
            image_id=image.id if image is not None else "",
            availability_zone=az,
            networks=networks,
            volumes=self._make_volumes(volumes, project_id, ctx, az),
            metadata=metadata,
            tags=tags,
            user_data=user_data,
            key_name=key_name,
            security_groups=groups,
            description=body.get("description"),
            hostname=body.get("hostname"),
            config_drive="True" if body.get("config_drive") else "",
        )
        servers = []
        for index in range(count):
            if count > 1:
                spec.name = f"{name}-{index + 1}"
                spec.hostname = None
            servers.append(
                self.core.lifecycle.create(spec, fault_mode=fault.kind if fault else None)
            )
            spec.volumes = []
        if body.get("return_reservation_id"):
            return json_response(202, {"reservation_id": servers[0].reservation_id})
        first = servers[0]
        location = f"{self.core.base_url}/compute/v2.1/servers/{first.id}"
        return json_response(
            202,
            {
                "server": {
                    "id": first.id,
                    "links": self.views.link("servers", first.id),
                    "OS-DCF:diskConfig": "MANUAL",
                    "security_groups": [{"name": g} for g in groups],
                    "adminPass": secrets.token_urlsafe(9),
                }
            },
            {"Location": location},
        )

    def _quota_count(
        self, project_id: str, vcpus: int, ram: int, min_count: int, max_count: int
    ) -> int:
        quota = self.state.quota_of(project_id)
        usage = self.state.usage_of(project_id)
        per = {"instances": 1, "cores": vcpus, "ram": ram}

        def overs(count: int) -> list[str]:
            return sorted(
                k for k, unit in per.items() if quota[k] >= 0 and usage[k] + unit * count > quota[k]
            )

        if not overs(max_count):
            return max_count
        if not overs(min_count):
            # As Nova: build as many as fit between min_count and max_count.
            count = max_count
            while count > min_count and overs(count):
                count -= 1
            return count
        bad = overs(min_count)
        requested = ", ".join(str(per[k] * min_count) for k in bad)
        used = ", ".join(str(usage[k]) for k in bad)
        allowed = ", ".join(str(quota[k]) for k in bad)
        names = ", ".join(bad)
        raise ApiError(
            403,
            f"Quota exceeded for {names}: Requested {requested}, but already "
            f"used {used} of {allowed} {names}",
        )

    def _networks(self, body: dict[str, Any], minor: int, project_id: str) -> list[NetworkRequest]:
        value = body.get("networks")
        if value is None:
            if minor >= 37:
                raise ApiError(
                    400,
                    "Invalid input for field/attribute server. Value: "
                    f"{body}. 'networks' is a required property",
                )
            value = "auto"
        if value == "none":
            return []
        if value == "auto":
            return [NetworkRequest(self.core.default_network())]
        if not isinstance(value, list):
            raise ApiError(400, f"Invalid input for field/attribute networks. Value: {value}.")
        out: list[NetworkRequest] = []
        for item in value:
            if not isinstance(item, dict):
                raise ApiError(400, "Invalid input for field/attribute networks.")
            if "port" in item:
                raise ApiError(400, f"Port {item['port']} could not be found.")
            network = self.state.networks.get(str(item.get("uuid", "")))
            if network is None:
                raise ApiError(400, f"Network {item.get('uuid')} could not be found.")
            if network.external:
                raise ApiError(
                    403,
                    f"It is not allowed to create an interface on external network {network.id}",
                )
            if not network.shared and network.project_id != project_id:
                raise ApiError(400, f"Network {network.id} could not be found.")
            fixed = item.get("fixed_ip")
            if fixed is not None and not self.state.subnets[network.subnet_ids[0]].pool.is_free(
                str(fixed)
            ):
                raise ApiError(
                    400,
                    f"Fixed IP address {fixed} is already in use on instance "
                    "or not valid for the network.",
                )
            out.append(NetworkRequest(network, str(fixed) if fixed else None))
        return out

    def _security_groups(self, body: dict[str, Any], project_id: str) -> list[str]:
        wanted = body.get("security_groups") or [{"name": "default"}]
        names: list[str] = []
        for item in wanted:
            ref = str(item.get("name", "")) if isinstance(item, dict) else ""
            group = next(
                (
                    g
                    for g in self.state.security_groups.values()
                    if g.project_id == project_id and ref in (g.name, g.id)
                ),
                None,
            )
            if group is None:
                raise ApiError(400, f"Unable to find security_group with name or id '{ref}'")
            names.append(group.name)
        return names

    def _boot_source(
        self, body: dict[str, Any], req: Request, flavor_disk: int, az: str
    ) -> tuple[Image | None, list[dict[str, Any]]]:
        """Resolve imageRef and block_device_mapping_v2 into an image and volume plans."""
        bdms = body.get("block_device_mapping_v2") or []
        if not isinstance(bdms, list):
            raise ApiError(400, "Invalid input for field/attribute block_device_mapping_v2.")
        image_ref = body.get("imageRef")
        boot_volume = False
        plans: list[dict[str, Any]] = []
        for bdm in bdms:
            if not isinstance(bdm, dict):
                raise ApiError(400, "Invalid input for field/attribute block_device_mapping_v2.")
            source, dest = bdm.get("source_type"), bdm.get("destination_type", "volume")
            is_root = str(bdm.get("boot_index")) == "0"
            if dest == "local":
                if is_root and source == "image":
                    image_ref = bdm.get("uuid")
                continue
            if source not in ("image", "volume", "blank"):
                raise ApiError(400, f"Block Device Mapping is Invalid: source {source}.")
            plans.append(
                {
                    "source": source,
                    "uuid": bdm.get("uuid"),
                    "root": is_root,
                    "size": bdm.get("volume_size"),
                    "dot": bool(bdm.get("delete_on_termination", False)),
                    "tag": bdm.get("tag"),
                }
            )
            boot_volume = boot_volume or is_root
        image: Image | None = None
        if boot_volume:
            image_ref = None
        elif image_ref:
            image = self.state.images.get(ref_id(image_ref))
            if image is None:
                raise ApiError(400, f"Image {image_ref} could not be found.")
            if flavor_disk and image.min_disk > flavor_disk:
                raise ApiError(
                    400,
                    "Flavor's disk is too small for requested image. Flavor "
                    f"disk is {flavor_disk * 2**30} bytes, image is "
                    f"{image.min_disk * 2**30} bytes.",
                )
        else:
            raise ApiError(400, "Missing imageRef attribute")
        return image, plans

    def _make_volumes(
        self, plans: list[dict[str, Any]], project_id: str, ctx: AuthContext, az: str
    ) -> list[VolumeRequest]:
        """Create or claim the volumes of block_device_mapping_v2 (after every check)."""
        out: list[VolumeRequest] = []
        next_letter = ord("b")
        for plan in sorted(plans, key=lambda p: not p["root"]):
            if plan["source"] == "volume":
                volume = self.state.volumes.get(str(plan["uuid"]))
                if volume is None or volume.project_id != project_id:
                    raise ApiError(
                        400,
                        f"Block Device Mapping is Invalid: failed to get volume {plan['uuid']}.",
                    )
                if volume.status != "available":
                    raise ApiError(
                        400,
                        f"Invalid volume: volume '{volume.id}' status must be "
                        f"'available'. Currently in '{volume.status}'",
                    )
            else:
                size = plan["size"]
                if not isinstance(size, int) or size < 1:
                    raise ApiError(
                        400,
                        "Block Device Mapping is Invalid: volume_size must be a positive integer.",
                    )
                image_id = str(plan["uuid"]) if plan["source"] == "image" else None
                if image_id is not None and image_id not in self.state.images:
                    raise ApiError(400, f"Image {image_id} could not be found.")
                volume = self.core.new_volume(
                    project_id, ctx.user.id, size, az, None, image_id=image_id, status="in-use"
                )
            if plan["root"]:
                device = "/dev/vda"
            else:
                device = f"/dev/vd{chr(next_letter)}"
                next_letter += 1
            out.append(VolumeRequest(volume, device, plan["dot"], plan["tag"]))
        return out

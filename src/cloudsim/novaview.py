"""How Nova renders servers and flavors, per microversion, with cached encodings."""

from __future__ import annotations

import bisect
import hashlib
from typing import Any

from cloudsim.core import Core
from cloudsim.lifecycle import status_of
from cloudsim.state import Flavor, Server
from cloudsim.web import ApiError, Request, dumps, iso

#: Minor versions at which the server view changes; a view is cached per bucket.
_THRESHOLDS = [3, 9, 19, 26, 47, 63, 73, 96, 98, 100]
_SUMMARY = -1
_MAX_CACHED = 3


def parse_microversion(
    req: Request,
    service: str,
    legacy: str | None,
    minimum: tuple[int, int],
    maximum: tuple[int, int],
) -> tuple[int, int]:
    """Negotiate a microversion from the request headers as oslo/Nova do.

    No header means the minimum; ``latest`` the maximum; outside the range is a 406.
    """
    value: str | None = None
    header = req.header("OpenStack-API-Version")
    if header:
        for part in header.split(","):
            name, _, version = part.strip().partition(" ")
            if name.lower() == service:
                value = version.strip()
    if value is None and legacy:
        value = req.header(legacy)
    if value is None:
        return minimum
    if value.lower() == "latest":
        return maximum
    major, dot, minor = value.partition(".")
    if not dot or not major.isdigit() or not minor.isdigit():
        raise ApiError(
            400,
            f"API Version String {value} is of invalid format. Must be of "
            "format MajorNum.MinorNum.",
        )
    wanted = (int(major), int(minor))
    if not minimum <= wanted <= maximum:
        raise ApiError(
            406,
            f"Version {value} is not supported by the API. Minimum is "
            f"{minimum[0]}.{minimum[1]} and maximum is "
            f"{maximum[0]}.{maximum[1]}.",
        )
    return wanted


def microversion_headers(
    service: str, version: tuple[int, int], legacy: str | None
) -> dict[str, str]:
    """The response headers that echo the negotiated microversion."""
    text = f"{version[0]}.{version[1]}"
    headers = {"OpenStack-API-Version": f"{service} {text}", "Vary": "OpenStack-API-Version"}
    if legacy:
        headers[legacy] = text
        headers["Vary"] += f", {legacy}"
    return headers


def _bucket(minor: int) -> int:
    return bisect.bisect_right(_THRESHOLDS, minor)


class ServerViews:
    """Builds and caches server JSON; a 1000-server page is then a join of bytes."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def link(self, kind: str, ident: str) -> list[dict[str, str]]:
        """Self and bookmark links of a compute resource."""
        base = self.core.base_url
        return [
            {"rel": "self", "href": f"{base}/compute/v2.1/{kind}/{ident}"},
            {"rel": "bookmark", "href": f"{base}/compute/{kind}/{ident}"},
        ]

    def summary(self, server: Server) -> bytes:
        """The id/name/links entry of GET /servers."""
        cached = server.cache.get(_SUMMARY)
        if cached is None:
            cached = server.cache[_SUMMARY] = dumps(
                {"id": server.id, "name": server.name, "links": self.link("servers", server.id)}
            )
        return cached

    def detail(self, server: Server, minor: int) -> bytes:
        """The full entry of GET /servers/detail and GET /servers/{id}."""
        bucket = _bucket(minor)
        cached = server.cache.get(bucket)
        if cached is None:
            # Clients rarely mix microversions; bound memory if one does.
            if len(server.cache) >= _MAX_CACHED:
                server.cache.clear()
            cached = server.cache[bucket] = dumps(self.detail_dict(server, minor))
        return cached

    def addresses(self, server: Server) -> dict[str, list[dict[str, Any]]]:
        """Fixed and floating addresses grouped by network name."""
        state = self.core.state
        out: dict[str, list[dict[str, Any]]] = {}
        if not server.networked:
            return out
        for port in state.ports_by_device.get(server.id, ()):
            network = state.networks.get(port.network_id)
            entries = out.setdefault(network.name if network else port.network_id, [])
            entries.append(
                {
                    "version": 4,
                    "addr": port.ip,
                    "OS-EXT-IPS:type": "fixed",
                    "OS-EXT-IPS-MAC:mac_addr": port.mac,
                }
            )
            fip = state.floating_by_port.get(port.id)
            if fip is not None:
                entries.append(
                    {
                        "version": 4,
                        "addr": fip.address,
                        "OS-EXT-IPS:type": "floating",
                        "OS-EXT-IPS-MAC:mac_addr": port.mac,
                    }
                )
        return out

    def partial(self, server: Server, minor: int, kind: str) -> bytes:
        """How Nova (2.69+) stands in for a server of a cell that does not answer:
        ``summary`` (GET /servers) gives its id, status ``UNKNOWN`` and links; ``detail``
        (GET /servers/detail) adds its project and creation time; ``show`` (GET
        /servers/{id}) what the API database keeps (user, image, flavor, zone, power
        state 0), without links. No name, addresses or metadata in any of them."""
        whole = self.detail_dict(server, minor)
        keys = {
            "summary": ("id", "links"),
            "detail": ("id", "tenant_id", "created", "links"),
            "show": (
                "id",
                "tenant_id",
                "created",
                "user_id",
                "image",
                "flavor",
                "OS-EXT-AZ:availability_zone",
            ),
        }[kind]
        view: dict[str, Any] = {k: whole[k] for k in keys}
        view["status"] = "UNKNOWN"
        if kind == "show":
            view["OS-EXT-STS:power_state"] = 0
            if minor >= 71:
                view["server_groups"] = []
        return dumps(view)

    def detail_dict(self, server: Server, minor: int) -> dict[str, Any]:
        """The server as Nova shows it at microversion 2.``minor``."""
        base = self.core.base_url
        flavor = server.flavor
        image: Any = ""
        if server.image_id:
            image = {
                "id": server.image_id,
                "links": [{"rel": "bookmark", "href": f"{base}/compute/images/{server.image_id}"}],
            }
            if minor >= 98:
                known = self.core.state.images.get(server.image_id)
                image["properties"] = dict(known.properties) if known else {}
        flavor_view: dict[str, Any]
        if minor >= 47:
            flavor_view = {
                "vcpus": flavor.vcpus,
                "ram": flavor.ram,
                "disk": flavor.disk,
                "ephemeral": flavor.ephemeral,
                "swap": flavor.swap,
                "original_name": flavor.name,
                "extra_specs": dict(flavor.extra_specs),
            }
        else:
            flavor_view = {
                "id": flavor.id,
                "links": [{"rel": "bookmark", "href": f"{base}/compute/flavors/{flavor.id}"}],
            }
        scheduled = server.task_state != "scheduling" or server.vm_state != "building"
        host_id = (
            hashlib.sha224((server.project_id + server.host).encode()).hexdigest()
            if scheduled and server.vm_state != "deleted"
            else ""
        )
        volumes: list[dict[str, Any]] = []
        for att in server.attachments:
            entry: dict[str, Any] = {"id": att.volume_id}
            if minor >= 3:
                entry["delete_on_termination"] = att.delete_on_termination
            volumes.append(entry)
        status = status_of(server)
        view: dict[str, Any] = {
            "id": server.id,
            "name": server.name,
            "status": status,
            "tenant_id": server.project_id,
            "user_id": server.user_id,
            "metadata": dict(server.metadata),
            "hostId": host_id,
            "image": image,
            "flavor": flavor_view,
            "created": iso(server.created),
            "updated": iso(server.updated),
            "addresses": self.addresses(server),
            "accessIPv4": "",
            "accessIPv6": "",
            "links": self.link("servers", server.id),
            "OS-DCF:diskConfig": "MANUAL",
            "progress": 0,
            "OS-EXT-AZ:availability_zone": server.availability_zone if scheduled else "",
            "config_drive": server.config_drive,
            "key_name": server.key_name,
            "OS-SRV-USG:launched_at": _usage_time(server.launched_at),
            "OS-SRV-USG:terminated_at": _usage_time(server.terminated_at),
            "security_groups": [{"name": g} for g in server.security_groups],
            "OS-EXT-STS:task_state": server.task_state,
            "OS-EXT-STS:vm_state": server.vm_state,
            "OS-EXT-STS:power_state": server.power_state,
            "os-extended-volumes:volumes_attached": volumes,
        }
        if server.fault is not None and status in ("ERROR", "DELETED"):
            view["fault"] = {
                "code": server.fault["code"],
                "created": iso(server.fault["created"]),
                "message": server.fault["message"],
            }
        if minor >= 9:
            view["locked"] = server.locked
        if minor >= 19:
            view["description"] = server.description
        if minor >= 26:
            view["tags"] = list(server.tags)
        if minor >= 63:
            view["trusted_image_certificates"] = None
        if minor >= 73:
            view["locked_reason"] = server.locked_reason
        if minor >= 96:
            view["pinned_availability_zone"] = None
        if minor >= 100:
            view["scheduler_hints"] = {}
        return view


def _usage_time(ts: float | None) -> str | None:
    """launched_at/terminated_at use microseconds and no zone, as Nova's usage extension."""
    if ts is None:
        return None
    text = iso(ts)
    assert text is not None
    return text[:-1] + f".{int((ts % 1) * 1_000_000):06d}"


def flavor_view(base: str, flavor: Flavor, minor: int, detail: bool) -> dict[str, Any]:
    """A flavor as Nova shows it at microversion 2.``minor``."""
    view: dict[str, Any] = {
        "id": flavor.id,
        "name": flavor.name,
        "links": [
            {"rel": "self", "href": f"{base}/compute/v2.1/flavors/{flavor.id}"},
            {"rel": "bookmark", "href": f"{base}/compute/flavors/{flavor.id}"},
        ],
    }
    if minor >= 55:
        view["description"] = flavor.description
    if not detail:
        return view
    view.update(
        {
            "ram": flavor.ram,
            "vcpus": flavor.vcpus,
            "disk": flavor.disk,
            "OS-FLV-EXT-DATA:ephemeral": flavor.ephemeral,
            "swap": flavor.swap if minor >= 75 else (flavor.swap or ""),
            "OS-FLV-DISABLED:disabled": False,
            "os-flavor-access:is_public": True,
            "rxtx_factor": 1.0,
        }
    )
    if minor >= 61:
        view["extra_specs"] = dict(flavor.extra_specs)
    return view

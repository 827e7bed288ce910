"""Neutron v2.0: networks, subnets, ports, floating IPs, security groups, routers, quotas."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

from cloudsim.core import AuthContext, Service
from cloudsim.neutron_resources import NeutronResources, not_found
from cloudsim.state import FloatingIp, Network, Port, SecurityGroup, Subnet
from cloudsim.web import (
    ApiError,
    Request,
    Response,
    int_arg,
    iso,
    json_response,
)

_RESERVED_PARAMS = {"limit", "marker", "fields", "sort_key", "sort_dir", "page_reverse"}
_EXTENSIONS = (
    "router",
    "external-net",
    "security-group",
    "quotas",
    "quota_details",
    "port-security",
    "standard-attr-tag",
    "standard-attr-timestamp",
    "standard-attr-description",
    "standard-attr-revisions",
    "network-mtu",
    "binding",
    "agent",
    "fip-port-details",
    "extraroute",
    "availability_zone",
)

View = dict[str, Any]


def _matches(view: View, key: str, values: list[str]) -> bool:
    value = view.get(key)
    if isinstance(value, bool):
        return str(value).lower() in [v.lower() for v in values]
    if isinstance(value, list):
        return any(v in value for v in values)
    return ("" if value is None else str(value)) in values


class Neutron(NeutronResources, Service):
    """The network service under /network."""

    name = "network"
    prefix = "/network"

    def register(self) -> None:
        """Add the Neutron routes."""
        add = self.router.add
        add("GET", "", self.versions)
        add("GET", "/v2.0", self.version)
        add("GET", "/v2.0/extensions", self.extensions)
        for collection, single, viewer, source in (
            ("networks", "network", self.network_view, self._networks),
            ("subnets", "subnet", self.subnet_view, self._subnets),
            ("ports", "port", self.port_view, self._ports),
            ("floatingips", "floatingip", self.fip_view, self._fips),
            ("security-groups", "security_group", self.sg_view, self._groups),
            ("routers", "router", self.router_view, self._routers),
        ):
            add(
                "GET",
                f"/v2.0/{collection}",
                self._lister(collection.replace("-", "_"), viewer, source),
            )
            add("GET", f"/v2.0/{collection}/{{item_id}}", self._getter(single, viewer, source))
        add("GET", "/v2.0/security-group-rules", self.list_rules)
        add("POST", "/v2.0/security-group-rules", self.create_rule)
        add("DELETE", "/v2.0/security-group-rules/{rule_id}", self.delete_rule)
        add("POST", "/v2.0/security-groups", self.create_group)
        add("DELETE", "/v2.0/security-groups/{item_id}", self.delete_group)
        add("POST", "/v2.0/floatingips", self.create_fip)
        add("PUT", "/v2.0/floatingips/{item_id}", self.update_fip)
        add("DELETE", "/v2.0/floatingips/{item_id}", self.delete_fip)
        add("PUT", "/v2.0/ports/{item_id}", self.update_port)
        add("GET", "/v2.0/quotas/{project_id}", lambda req: self.quotas(req, False))
        add("GET", "/v2.0/quotas/{project_id}/details", lambda req: self.quotas(req, True))
        add("PUT", "/v2.0/quotas/{project_id}", self.update_quotas)

    def is_public(self, req: Request) -> bool:
        """Version documents need no token."""
        return req.method == "GET" and req.path.rstrip("/") in ("/network", "/network/v2.0")

    def render_error(self, err: ApiError) -> Response:
        """Neutron's ``{"NeutronError": {type, message, detail}}`` body."""
        kind = err.kind or {
            400: "BadRequest",
            401: "Unauthorized",
            403: "Forbidden",
            404: "NotFound",
            409: "Conflict",
        }.get(err.status, "HTTPError")
        return json_response(
            err.status,
            {"NeutronError": {"type": kind, "message": err.message, "detail": ""}},
            err.headers,
        )

    # -- discovery ----------------------------------------------------------------------
    def versions(self, req: Request) -> Response:
        """GET /network/."""
        return json_response(
            200,
            {
                "versions": [
                    {
                        "id": "v2.0",
                        "status": "CURRENT",
                        "links": [{"rel": "self", "href": f"{self.core.base_url}/network/v2.0/"}],
                    }
                ]
            },
        )

    def version(self, req: Request) -> Response:
        """GET /network/v2.0/: the resource list."""
        base = f"{self.core.base_url}/network/v2.0"
        return json_response(
            200,
            {
                "resources": [
                    {
                        "name": n,
                        "collection": n + "s",
                        "links": [{"rel": "self", "href": f"{base}/{n}s"}],
                    }
                    for n in ("network", "subnet", "port")
                ]
            },
        )

    def extensions(self, req: Request) -> Response:
        """GET /v2.0/extensions."""
        return json_response(
            200,
            {
                "extensions": [
                    {
                        "alias": a,
                        "name": a,
                        "description": a,
                        "links": [],
                        "updated": "2013-01-01T00:00:00-00:00",
                    }
                    for a in _EXTENSIONS
                ]
            },
        )

    # -- visibility ---------------------------------------------------------------------
    @staticmethod
    def _ctx(req: Request) -> AuthContext:
        ctx: AuthContext = req.auth
        ctx.project_id  # noqa: B018 - fails with 403 for unscoped tokens
        return ctx

    def _networks(self, req: Request) -> Iterable[Network]:
        ctx = self._ctx(req)
        return [
            n
            for n in self.state.networks.values()
            if ctx.is_admin or n.shared or n.external or n.project_id == ctx.project_id
        ]

    def _subnets(self, req: Request) -> Iterable[Subnet]:
        visible = {n.id for n in self._networks(req)}
        return [s for s in self.state.subnets.values() if s.network_id in visible]

    def _ports(self, req: Request) -> Iterable[Port]:
        ctx = self._ctx(req)
        device = None if self.core.ignore_filters else req.arg("device_id")
        ports: Iterable[Port] = (
            self.state.ports_by_device.get(device, [])
            if device is not None
            else self.state.ports.values()
        )
        return [p for p in ports if ctx.is_admin or p.project_id == ctx.project_id]

    def _fips(self, req: Request) -> Iterable[FloatingIp]:
        ctx = self._ctx(req)
        return [
            f
            for f in self.state.floating_ips.values()
            if ctx.is_admin or f.project_id == ctx.project_id
        ]

    def _groups(self, req: Request) -> Iterable[SecurityGroup]:
        ctx = self._ctx(req)
        return [
            g
            for g in self.state.security_groups.values()
            if ctx.is_admin or g.project_id == ctx.project_id
        ]

    def _routers(self, req: Request) -> Iterable[dict[str, Any]]:
        ctx = self._ctx(req)
        return [
            r
            for r in self.state.routers.values()
            if ctx.is_admin or r["project_id"] == ctx.project_id
        ]

    # -- views --------------------------------------------------------------------------
    @staticmethod
    def _std(project_id: str, created: float, updated: float | None = None) -> View:
        return {
            "project_id": project_id,
            "tenant_id": project_id,
            "created_at": iso(created),
            "updated_at": iso(updated or created),
            "revision_number": 1,
            "tags": [],
            "description": "",
        }

    def network_view(self, net: Network) -> View:
        """A network as Neutron shows it."""
        view = self._std(net.project_id, net.created)
        view.update(
            {
                "id": net.id,
                "name": net.name,
                "status": "ACTIVE",
                "subnets": list(net.subnet_ids),
                "admin_state_up": True,
                "shared": net.shared,
                "router:external": net.external,
                "mtu": net.mtu,
                "port_security_enabled": True,
                "availability_zones": ["nova"],
                "availability_zone_hints": [],
                "is_default": net.external,
                "ipv4_address_scope": None,
                "ipv6_address_scope": None,
                "l2_adjacency": True,
                "qos_policy_id": None,
            }
        )
        return view

    def subnet_view(self, subnet: Subnet) -> View:
        """A subnet as Neutron shows it."""
        net = subnet.pool.network
        view = self._std(subnet.project_id, subnet.created)
        view.update(
            {
                "id": subnet.id,
                "name": subnet.name,
                "network_id": subnet.network_id,
                "cidr": str(net),
                "ip_version": 4,
                "gateway_ip": subnet.pool.gateway,
                "allocation_pools": [
                    {"start": str(net.network_address + 2), "end": str(net.broadcast_address - 1)}
                ],
                "enable_dhcp": True,
                "dns_nameservers": [],
                "host_routes": [],
                "ipv6_ra_mode": None,
                "ipv6_address_mode": None,
                "subnetpool_id": None,
                "service_types": [],
                "segment_id": None,
            }
        )
        return view

    def port_view(self, port: Port) -> View:
        """A port as Neutron shows it."""
        view = self._std(port.project_id, port.created, port.updated)
        view.update(
            {
                "id": port.id,
                "name": port.name,
                "network_id": port.network_id,
                "mac_address": port.mac,
                "admin_state_up": True,
                "status": port.status,
                "device_id": port.device_id,
                "device_owner": port.device_owner,
                "fixed_ips": [{"subnet_id": port.subnet_id, "ip_address": port.ip}],
                "security_groups": list(port.security_group_ids),
                "allowed_address_pairs": [],
                "extra_dhcp_opts": [],
                "port_security_enabled": True,
                "binding:vnic_type": "normal",
                "ip_allocation": "immediate",
            }
        )
        return view

    def fip_view(self, fip: FloatingIp) -> View:
        """A floating IP as Neutron shows it."""
        view = self._std(fip.project_id, fip.created, fip.updated)
        port = self.state.ports.get(fip.port_id) if fip.port_id else None
        view.update(
            {
                "id": fip.id,
                "floating_ip_address": fip.address,
                "floating_network_id": fip.network_id,
                "router_id": fip.router_id if port else None,
                "port_id": fip.port_id,
                "fixed_ip_address": fip.fixed_ip,
                "status": "ACTIVE" if port else "DOWN",
                "description": fip.description,
                "dns_domain": "",
                "dns_name": "",
                "qos_policy_id": None,
                "port_forwardings": [],
                "port_details": None
                if port is None
                else {
                    "name": port.name,
                    "network_id": port.network_id,
                    "mac_address": port.mac,
                    "admin_state_up": True,
                    "status": port.status,
                    "device_id": port.device_id,
                    "device_owner": port.device_owner,
                },
            }
        )
        return view

    def sg_view(self, group: SecurityGroup) -> View:
        """A security group with its rules."""
        view = self._std(group.project_id, group.created)
        view.update(
            {
                "id": group.id,
                "name": group.name,
                "description": group.description,
                "security_group_rules": [dict(r) for r in group.rules],
                "stateful": True,
                "shared": False,
            }
        )
        return view

    @staticmethod
    def router_view(router: dict[str, Any]) -> View:
        """A router."""
        return dict(router)

    # -- generic list/get -----------------------------------------------------------------
    def _page(self, req: Request, collection: str, views: list[View]) -> Response:
        for key, values in req.query.items():
            if key in _RESERVED_PARAMS or self.core.ignore_filters:
                continue
            if key == "fixed_ips":
                wanted = [v.split("=", 1)[1] for v in values if v.startswith("ip_address=")]
                views = [
                    v
                    for v in views
                    if any(ip["ip_address"] in wanted for ip in v.get("fixed_ips", []))
                ]
            elif views and key in views[0]:
                views = [v for v in views if _matches(v, key, values)]
        body: dict[str, Any] = {}
        # As Neutron's pagination_max_limit: when set, every list is paged by it.
        limit = int_arg(req, "limit")
        cap = self.core.max_limit("network")
        if cap is not None:
            limit = min(limit or cap, cap)
        if limit:
            views.sort(key=lambda v: str(v["id"]))
            marker = req.arg("marker")
            if marker:
                views = [v for v in views if str(v["id"]) > marker]
            page = views[:limit]
            links = []
            if len(page) == limit:
                params = [
                    (k, v) for k, vals in req.query.items() if k != "marker" for v in vals
                ] + [("marker", str(page[-1]["id"]))]
                links.append(
                    {
                        "rel": "next",
                        "href": f"{self.core.base_url}/network/v2.0/"
                        f"{collection.replace('_', '-')}?{urlencode(params)}",
                    }
                )
            body[f"{collection}_links"] = links
            views = page
        fields = [f for v in req.query.get("fields", []) for f in v.split(",") if f]
        if fields:
            views = [{k: v[k] for k in fields if k in v} for v in views]
        body[collection] = views
        return json_response(200, body)

    def _lister(
        self,
        collection: str,
        viewer: Callable[[Any], View],
        source: Callable[[Request], Iterable[Any]],
    ) -> Callable[[Request], Response]:
        def handler(req: Request) -> Response:
            return self._page(req, collection, [viewer(item) for item in source(req)])

        return handler

    def _getter(
        self, single: str, viewer: Callable[[Any], View], source: Callable[[Request], Iterable[Any]]
    ) -> Callable[[Request], Response]:
        kinds = {
            "network": "Network",
            "subnet": "Subnet",
            "port": "Port",
            "floatingip": "FloatingIP",
            "security_group": "SecurityGroup",
            "router": "Router",
        }

        def handler(req: Request) -> Response:
            ident = req.params["item_id"]
            for item in source(req):
                # Routers are plain dicts; everything else is a record with an id.
                item_id = item["id"] if isinstance(item, dict) else item.id
                if item_id == ident:
                    return json_response(200, {single: viewer(item)})
            raise not_found(kinds[single], ident)

        return handler

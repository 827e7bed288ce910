"""Neutron writes: floating IPs, port updates, security groups and quotas."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cloudsim.config import normalize_quota
from cloudsim.core import AuthContext, Core
from cloudsim.state import CloudState, FloatingIp, Port, SecurityGroup
from cloudsim.web import ApiError, Request, Response, empty, json_response

_NEUTRON_QUOTAS = (
    "floatingip",
    "network",
    "port",
    "router",
    "security_group",
    "security_group_rule",
    "subnet",
)


def not_found(kind: str, ident: str) -> ApiError:
    """Neutron's 404 (type ``<Kind>NotFound``)."""
    words = {
        "Network": "Network",
        "Subnet": "Subnet",
        "Port": "Port",
        "FloatingIP": "Floating IP",
        "SecurityGroup": "Security group",
        "Router": "Router",
        "SecurityGroupRule": "Security group rule",
    }
    return ApiError(
        404, f"{words.get(kind, kind)} {ident} could not be found.", kind=f"{kind}NotFound"
    )


class NeutronResources:
    """Mixed into the Neutron service, whose views and visibility rules it uses."""

    core: Core
    state: CloudState

    if TYPE_CHECKING:

        def _ctx(self, req: Request) -> AuthContext: ...
        def _ports(self, req: Request) -> Iterable[Port]: ...
        def _fips(self, req: Request) -> Iterable[FloatingIp]: ...
        def _groups(self, req: Request) -> Iterable[SecurityGroup]: ...
        def port_view(self, port: Port) -> dict[str, Any]:
            """Defined by the service."""

        def fip_view(self, fip: FloatingIp) -> dict[str, Any]:
            """Defined by the service."""

        def sg_view(self, group: SecurityGroup) -> dict[str, Any]:
            """Defined by the service."""

        def _page(self, req: Request, collection: str, views: list[dict[str, Any]]) -> Response: ...

    # -- floating IPs ---------------------------------------------------------------------
    def _fip(self, req: Request) -> FloatingIp:
        ident = req.params["item_id"]
        fip = next((f for f in self._fips(req) if f.id == ident), None)
        if fip is None:
            raise not_found("FloatingIP", ident)
        return fip

    def _touch_device(self, port_id: str | None) -> None:
        port = self.state.ports.get(port_id) if port_id else None
        server = self.state.servers.get(port.device_id) if port else None
        if server is not None:
            server.touch()

    def _associate(self, fip: FloatingIp, port_id: str | None, fixed: str | None) -> None:
        """Point a floating IP at a port (or nowhere); checks first, so errors change nothing."""
        port = None
        if port_id:
            port = self.state.ports.get(port_id)
            if port is None or port.project_id != fip.project_id:
                raise not_found("Port", port_id)
            if fixed is not None and fixed != port.ip:
                raise ApiError(
                    400,
                    f"Bad floatingip request: Port {port_id} does not have fixed ip {fixed}.",
                    kind="BadRequest",
                )
            other = self.state.floating_by_port.get(port.id)
            if other is not None and other is not fip:
                raise ApiError(
                    409,
                    f"Cannot associate floating IP {fip.address} ({fip.id}) "
                    f"with port {port.id} using fixed IP {port.ip}, as that "
                    "fixed IP already has a floating IP on external network "
                    f"{other.network_id}.",
                    kind="FloatingIPPortAlreadyAssociated",
                )
        if fip.port_id:
            self.state.floating_by_port.pop(fip.port_id, None)
            self._touch_device(fip.port_id)
            fip.port_id = None
            fip.fixed_ip = None
        if port is not None:
            fip.port_id = port.id
            fip.fixed_ip = port.ip
            self.state.floating_by_port[port.id] = fip
            self._touch_device(port.id)
        fip.updated = time.time()
        hook = self.state.fip_hook
        if hook is not None:
            hook(fip.address, fip.fixed_ip)

    def create_fip(self, req: Request) -> Response:
        """POST /v2.0/floatingips → 201; over quota is 409 OverQuota."""
        ctx = self._ctx(req)
        body = req.json_object("floatingip")
        net_id = str(body.get("floating_network_id", ""))
        network = self.state.networks.get(net_id)
        if network is None:
            raise not_found("Network", net_id)
        if not network.external:
            raise ApiError(
                400,
                f"Bad floatingip request: Network {net_id} is not a valid external network.",
                kind="BadRequest",
            )
        project_id = str(body.get("project_id") or body.get("tenant_id") or ctx.project_id)
        if project_id != ctx.project_id and not ctx.is_admin:
            raise ApiError(403, "Not authorized.", kind="HTTPForbidden")
        limit = self.state.quota_of(project_id)["floatingip"]
        used = sum(1 for f in self.state.floating_ips.values() if f.project_id == project_id)
        if 0 <= limit <= used:
            raise ApiError(409, "Quota exceeded for resources: ['floatingip'].", kind="OverQuota")
        pool = self.state.subnets[network.subnet_ids[0]].pool
        wanted = body.get("floating_ip_address")
        try:
            address = pool.allocate(str(wanted) if wanted else None)
        except (LookupError, ValueError) as exc:
            if wanted:
                raise ApiError(
                    409,
                    f"IP address {wanted} already allocated in subnet {network.subnet_ids[0]}",
                    kind="IpAddressAlreadyAllocated",
                ) from exc
            raise ApiError(
                409,
                f"No more IP addresses available on network {net_id}.",
                kind="IpAddressGenerationFailure",
            ) from exc
        now = time.time()
        router_id = next(iter(self.state.routers), "")
        fip = FloatingIp(
            str(uuid.uuid4()),
            address,
            net_id,
            project_id,
            router_id,
            now,
            now,
            description=str(body.get("description") or ""),
        )
        try:
            self._associate(fip, body.get("port_id"), body.get("fixed_ip_address"))
        except ApiError:
            pool.release(address)
            raise
        self.state.floating_ips[fip.id] = fip
        return json_response(201, {"floatingip": self.fip_view(fip)})

    def update_fip(self, req: Request) -> Response:
        """PUT /v2.0/floatingips/{id}: associate (port_id) or disassociate (null)."""
        fip = self._fip(req)
        body = req.json_object("floatingip")
        if "port_id" in body:
            self._associate(fip, body["port_id"], body.get("fixed_ip_address"))
        if "description" in body:
            fip.description = str(body["description"] or "")
            fip.updated = time.time()
        return json_response(200, {"floatingip": self.fip_view(fip)})

    def delete_fip(self, req: Request) -> Response:
        """DELETE /v2.0/floatingips/{id} → 204."""
        fip = self._fip(req)
        self._associate(fip, None, None)
        del self.state.floating_ips[fip.id]
        network = self.state.networks[fip.network_id]
        self.state.subnets[network.subnet_ids[0]].pool.release(fip.address)
        return empty(204)

    # -- ports --------------------------------------------------------------------------
    def update_port(self, req: Request) -> Response:
        """PUT /v2.0/ports/{id}: name and security groups."""
        ident = req.params["item_id"]
        port = next((p for p in self._ports(req) if p.id == ident), None)
        if port is None:
            raise not_found("Port", ident)
        body = req.json_object("port")
        if "name" in body:
            port.name = str(body["name"] or "")
        if "security_groups" in body:
            port.security_group_ids = [str(g) for g in body["security_groups"] or []]
        port.updated = time.time()
        return json_response(200, {"port": self.port_view(port)})

    # -- security groups ------------------------------------------------------------------
    def create_group(self, req: Request) -> Response:
        """POST /v2.0/security-groups → 201 (409 OverQuota past the quota)."""
        ctx = self._ctx(req)
        body = req.json_object("security_group")
        project_id = ctx.project_id
        limit = self.state.quota_of(project_id)["security_group"]
        used = sum(1 for g in self.state.security_groups.values() if g.project_id == project_id)
        if 0 <= limit <= used:
            raise ApiError(
                409, "Quota exceeded for resources: ['security_group'].", kind="OverQuota"
            )
        name = str(body.get("name") or "")
        if name == "default":
            raise ApiError(
                409,
                "Default security group already exists.",
                kind="SecurityGroupDefaultAlreadyExists",
            )
        group = SecurityGroup(
            str(uuid.uuid4()), name, project_id, str(body.get("description") or ""), time.time()
        )
        for ethertype in ("IPv4", "IPv6"):
            group.rules.append(self._rule(group, {"direction": "egress", "ethertype": ethertype}))
        self.state.security_groups[group.id] = group
        return json_response(201, {"security_group": self.sg_view(group)})

    def delete_group(self, req: Request) -> Response:
        """DELETE /v2.0/security-groups/{id}."""
        ident = req.params["item_id"]
        group = next((g for g in self._groups(req) if g.id == ident), None)
        if group is None:
            raise not_found("SecurityGroup", ident)
        if group.name == "default":
            raise ApiError(
                409,
                "Insufficient rights for removing default security group.",
                kind="SecurityGroupCannotRemoveDefault",
            )
        if any(group.id in p.security_group_ids for p in self.state.ports.values()):
            raise ApiError(409, f"Security Group {group.id} in use.", kind="SecurityGroupInUse")
        del self.state.security_groups[group.id]
        return empty(204)

    @staticmethod
    def _rule(group: SecurityGroup, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": str(uuid.uuid4()),
            "security_group_id": group.id,
            "direction": body.get("direction", "ingress"),
            "ethertype": body.get("ethertype", "IPv4"),
            "protocol": body.get("protocol"),
            "port_range_min": body.get("port_range_min"),
            "port_range_max": body.get("port_range_max"),
            "remote_ip_prefix": body.get("remote_ip_prefix"),
            "remote_group_id": body.get("remote_group_id"),
            "project_id": group.project_id,
            "tenant_id": group.project_id,
            "description": str(body.get("description") or ""),
        }

    def list_rules(self, req: Request) -> Response:
        """GET /v2.0/security-group-rules."""
        rules = [dict(r) for g in self._groups(req) for r in g.rules]
        return self._page(req, "security_group_rules", rules)

    def create_rule(self, req: Request) -> Response:
        """POST /v2.0/security-group-rules → 201."""
        body = req.json_object("security_group_rule")
        ident = str(body.get("security_group_id", ""))
        group = next((g for g in self._groups(req) if g.id == ident), None)
        if group is None:
            raise not_found("SecurityGroup", ident)
        if body.get("direction") not in ("ingress", "egress"):
            raise ApiError(400, "Invalid input for direction.", kind="HTTPBadRequest")
        rule = self._rule(group, body)
        group.rules.append(rule)
        return json_response(201, {"security_group_rule": dict(rule)})

    def delete_rule(self, req: Request) -> Response:
        """DELETE /v2.0/security-group-rules/{id}."""
        ident = req.params["rule_id"]
        for group in self._groups(req):
            for rule in group.rules:
                if rule["id"] == ident:
                    group.rules.remove(rule)
                    return empty(204)
        raise not_found("SecurityGroupRule", ident)

    # -- quotas -------------------------------------------------------------------------
    def _used(self, project_id: str) -> dict[str, int]:
        state = self.state
        return {
            "floatingip": sum(1 for f in state.floating_ips.values() if f.project_id == project_id),
            "network": sum(1 for n in state.networks.values() if n.project_id == project_id),
            "subnet": sum(1 for s in state.subnets.values() if s.project_id == project_id),
            "port": sum(1 for p in state.ports.values() if p.project_id == project_id),
            "router": sum(1 for r in state.routers.values() if r["project_id"] == project_id),
            "security_group": sum(
                1 for g in state.security_groups.values() if g.project_id == project_id
            ),
            "security_group_rule": sum(
                len(g.rules) for g in state.security_groups.values() if g.project_id == project_id
            ),
        }

    def quotas(self, req: Request, details: bool) -> Response:
        """GET /v2.0/quotas/{project}[/details]."""
        ctx = self._ctx(req)
        project_id = req.params["project_id"]
        if project_id != ctx.project_id and not ctx.is_admin:
            raise ApiError(403, "Not authorized.", kind="HTTPForbidden")
        quota = self.state.quota_of(project_id)
        if not details:
            return json_response(200, {"quota": {k: quota[k] for k in _NEUTRON_QUOTAS}})
        used = self._used(project_id)
        return json_response(
            200,
            {
                "quota": {
                    k: {"limit": quota[k], "used": used[k], "reserved": 0} for k in _NEUTRON_QUOTAS
                }
            },
        )

    def update_quotas(self, req: Request) -> Response:
        """PUT /v2.0/quotas/{project} (admin only)."""
        ctx = self._ctx(req)
        if not ctx.is_admin:
            raise ApiError(403, "Not authorized.", kind="HTTPForbidden")
        project = self.state.projects.get(req.params["project_id"])
        if project is None:
            raise ApiError(404, "Project not found.", kind="NotFound")
        try:
            project.quota.update(
                normalize_quota({k: int(v) for k, v in req.json_object("quota").items()})
            )
        except (TypeError, ValueError) as exc:
            raise ApiError(400, str(exc), kind="BadRequest") from exc
        quota = self.state.quota_of(project.id)
        return json_response(200, {"quota": {k: quota[k] for k in _NEUTRON_QUOTAS}})

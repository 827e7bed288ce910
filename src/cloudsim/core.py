"""The shared heart of a simulated cloud: state, clock, rules, and the default resources."""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass

from cloudsim.clock import Scheduler, SimClock
from cloudsim.config import ProjectSpec, SimConfig, normalize_quota
from cloudsim.faults import Faults, RequestLog
from cloudsim.lifecycle import Backing, Lifecycle
from cloudsim.state import (
    CloudState,
    Domain,
    Flavor,
    Image,
    IpPool,
    Network,
    Project,
    SecurityGroup,
    Subnet,
    Token,
    User,
    Volume,
)
from cloudsim.web import ApiError, Request, Response, Router, json_response

#: Devstack's flavors, same ids.
DEFAULT_FLAVORS = [
    ("1", "m1.tiny", 1, 512, 1),
    ("2", "m1.small", 1, 2048, 20),
    ("3", "m1.medium", 2, 4096, 40),
    ("4", "m1.large", 4, 8192, 80),
    ("5", "m1.xlarge", 8, 16384, 160),
    ("42", "m1.nano", 1, 128, 1),
    ("84", "m1.micro", 1, 192, 1),
]

#: Images every fresh cloud has: (name, min_disk, properties).
DEFAULT_IMAGES: list[tuple[str, int, dict[str, str]]] = [
    ("cirros-0.6.2-x86_64-disk", 0, {"os_distro": "cirros"}),
    ("ubuntu-22.04-desktop", 10, {"os_distro": "ubuntu", "os_version": "22.04"}),
    ("rocky-9-desktop", 10, {"os_distro": "rocky", "os_version": "9"}),
    ("windows-11-desktop", 40, {"os_distro": "windows", "os_type": "windows"}),
]


def stable_id(*parts: str) -> str:
    """A Keystone-style 32-hex id derived from names, so ids survive restarts."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "cloudsim:" + "/".join(parts)).hex


@dataclass(slots=True)
class AuthContext:
    """Who is calling: the validated token, its user and the scoped project."""

    token: Token
    user: User
    project: Project | None
    roles: list[str]

    @property
    def is_admin(self) -> bool:
        """Holds the admin role in the scoped project."""
        return "admin" in self.roles

    @property
    def project_id(self) -> str:
        """Id of the scoped project; API calls that need one fail with 403 without it."""
        if self.project is None:
            raise ApiError(403, "The request requires a project-scoped token.")
        return self.project.id


class Core:
    """State, clock, rules and log of one simulated cloud, shared by all services."""

    def __init__(self, config: SimConfig, backing: Backing | None = None) -> None:
        self.config = config
        self.state = CloudState()
        self.clock = SimClock(config.clock_speed)
        self.scheduler = Scheduler(self.clock)
        self.faults = Faults(config.seed)
        self.log = RequestLog(config.request_log_size)
        self.lifecycle = Lifecycle(self.state, self.scheduler, config.timings, backing)
        self.base_url = f"http://{config.host}:{config.port}"
        self.metadata_url: str | None = None
        self.state.default_quota.update(normalize_quota(config.quota))
        self.max_limits: dict[str, int | None] = {}
        self.ignore_filters = False
        self.max_microversion = config.max_microversion
        # Servers in a cell that does not answer (see Nova.list_servers and show).
        self.down_cell: set[str] = set()
        self.restore_behaviour()
        self._populate_identity()
        self.populate_resources()

    def restore_behaviour(self) -> None:
        """Page caps, filtering, microversion and cells back to what the cloud started
        with."""
        self.max_limits = dict(self.config.max_limits)
        self.ignore_filters = self.config.ignore_filters
        self.max_microversion = self.config.max_microversion
        self.down_cell = set()

    def max_limit(self, service: str) -> int | None:
        """The page cap of a service (``None``: pages only when the client asks)."""
        return self.max_limits.get(service)

    # -- time -----------------------------------------------------------------------------
    def settle(self) -> None:
        """Apply every state change that is due by now; call with or without the lock."""
        with self.state.lock:
            self.scheduler.run_due()

    # -- identity ---------------------------------------------------------------------------
    def _populate_identity(self) -> None:
        self.add_domain("Default", "default")
        admin = self.add_project(ProjectSpec("admin", users={"admin": "password"}))
        admin_user = self.state.user_by_name("admin", "default")
        assert admin_user is not None
        admin_user.roles[admin.id] = ["admin", "member", "reader"]
        specs = self.config.projects or [ProjectSpec.parse("demo")]
        for spec in specs:
            self.add_project(spec)

    def add_domain(self, name: str, domain_id: str | None = None) -> Domain:
        """Create a domain (or return the existing one of that name)."""
        existing = self.state.domain_by_name_or_id({"name": name})
        if existing is not None:
            return existing
        domain = Domain(domain_id or stable_id("domain", name), name)
        self.state.domains[domain.id] = domain
        return domain

    def add_project(self, spec: ProjectSpec) -> Project:
        """Create a project with its users (member role) and default security group."""
        with self.state.lock:
            domain = self.add_domain(spec.domain)
            project = self.state.project_by_name(spec.name, domain.id)
            if project is None:
                project = Project(
                    stable_id("project", domain.name, spec.name), spec.name, domain.id, {}
                )
                self.state.projects[project.id] = project
                self._default_security_group(project.id)
            for user_name, password in spec.users.items():
                user = self.state.user_by_name(user_name, domain.id)
                if user is None:
                    user = User(
                        stable_id("user", domain.name, user_name),
                        user_name,
                        domain.id,
                        password,
                        default_project_id=project.id,
                    )
                    self.state.users[user.id] = user
                user.password = password
                user.roles.setdefault(project.id, ["member", "reader"])
            return project

    def find_project(self, ref: str) -> Project:
        """A project by id or name, for the control API and helpers."""
        project = self.state.projects.get(ref) or self.state.project_by_name(ref)
        if project is None:
            raise ApiError(404, f"Could not find project: {ref}.")
        return project

    # -- resources --------------------------------------------------------------------------
    def populate_resources(self) -> None:
        """Create the default flavors, images, networks, router and security groups."""
        state = self.state
        now = time.time()
        for fid, name, vcpus, ram, disk in DEFAULT_FLAVORS:
            state.flavors[fid] = Flavor(fid, name, vcpus, ram, disk)
        for name, min_disk, props in DEFAULT_IMAGES:
            self.add_image(name, min_disk=min_disk, properties=props)
        admin = self.find_project("admin")
        public = Network(
            stable_id("network", "public"),
            "public",
            admin.id,
            external=True,
            shared=False,
            created=now,
            mtu=1500,
        )
        private = Network(
            stable_id("network", "private"),
            "private",
            admin.id,
            external=False,
            shared=True,
            created=now,
        )
        for net, cidr in ((public, self.config.floating_cidr), (private, self.config.fixed_cidr)):
            subnet = Subnet(
                stable_id("subnet", net.name),
                f"{net.name}-subnet",
                net.id,
                admin.id,
                IpPool(cidr),
                now,
            )
            state.subnets[subnet.id] = subnet
            net.subnet_ids.append(subnet.id)
            state.networks[net.id] = net
        router_id = stable_id("router", "router1")
        state.routers[router_id] = {
            "id": router_id,
            "name": "router1",
            "project_id": admin.id,
            "tenant_id": admin.id,
            "status": "ACTIVE",
            "admin_state_up": True,
            "external_gateway_info": {"network_id": public.id, "enable_snat": True},
            "description": "",
            "tags": [],
            "routes": [],
        }
        for project_id in state.projects:
            self._default_security_group(project_id)

    def _default_security_group(self, project_id: str) -> SecurityGroup:
        for group in self.state.security_groups.values():
            if group.project_id == project_id and group.name == "default":
                return group
        group = SecurityGroup(
            stable_id("secgroup", project_id, "default"),
            "default",
            project_id,
            "Default security group",
            time.time(),
        )
        for direction, ethertype in (
            ("egress", "IPv4"),
            ("egress", "IPv6"),
            ("ingress", "IPv4"),
            ("ingress", "IPv6"),
        ):
            group.rules.append(
                {
                    "id": str(uuid.uuid4()),
                    "security_group_id": group.id,
                    "direction": direction,
                    "ethertype": ethertype,
                    "protocol": None,
                    "port_range_min": None,
                    "port_range_max": None,
                    "remote_ip_prefix": None,
                    "remote_group_id": group.id if direction == "ingress" else None,
                    "project_id": project_id,
                    "tenant_id": project_id,
                    "description": "",
                }
            )
        self.state.security_groups[group.id] = group
        return group

    def add_image(
        self, name: str, *, min_disk: int = 0, properties: dict[str, str] | None = None
    ) -> Image:
        """Register an active public image."""
        state = self.state
        state.image_seq += 1
        image = Image(
            id=str(
                uuid.UUID(
                    hashlib.md5(
                        f"image:{name}:{state.image_seq}".encode(), usedforsecurity=False
                    ).hexdigest()
                )
            ),
            name=name,
            seq=state.image_seq,
            created=time.time(),
            min_disk=min_disk,
            properties=dict(properties or {}),
        )
        state.images[image.id] = image
        return image

    def network_by_name(self, name: str) -> Network | None:
        """A network by id or name."""
        if name in self.state.networks:
            return self.state.networks[name]
        return next((n for n in self.state.networks.values() if n.name == name), None)

    def default_network(self) -> Network:
        """The shared tenant network servers land on with networks=auto."""
        network = self.network_by_name("private")
        assert network is not None
        return network

    def new_volume(
        self,
        project_id: str,
        user_id: str,
        size: int,
        az: str,
        name: str | None,
        *,
        image_id: str | None = None,
        description: str | None = None,
        status: str = "creating",
        volume_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Volume:
        """Create a volume after the Cinder quota check (413 as Cinder when over)."""
        state = self.state
        quota = state.quota_of(project_id)
        mine = [v for v in state.volumes.values() if v.project_id == project_id]
        if 0 <= quota["volumes"] < len(mine) + 1:
            raise ApiError(
                413,
                "VolumeLimitExceeded: Maximum number of volumes allowed "
                f"({quota['volumes']}) exceeded for quota 'volumes'.",
                headers={"Retry-After": "0"},
            )
        used = sum(v.size for v in mine)
        if 0 <= quota["gigabytes"] < used + size:
            raise ApiError(
                413,
                "VolumeSizeExceedsAvailableQuota: Requested volume or "
                f"snapshot exceeds allowed gigabytes quota. Requested {size}G,"
                f" quota is {quota['gigabytes']}G and {used}G has been "
                "consumed.",
                headers={"Retry-After": "0"},
            )
        now = time.time()
        volume = Volume(
            id=str(uuid.uuid4()),
            name=name,
            project_id=project_id,
            user_id=user_id,
            size=size,
            status=status,
            availability_zone=az,
            created=now,
            updated=now,
            description=description,
            image_id=image_id,
            volume_type=volume_type or "lvmdriver-1",
            metadata=dict(metadata or {}),
        )
        state.volumes[volume.id] = volume
        if status == "creating":
            self.lifecycle.volume_later(volume, "available")
        return volume

    # -- requests -----------------------------------------------------------------------------
    def scoped_project(self, req: Request) -> str:
        """Project id of the caller, or 403 for an unscoped token."""
        auth: AuthContext = req.auth
        return auth.project_id


class Service:
    """Base of a simulated API: a path prefix, its routes and its error body format."""

    name = ""
    prefix = ""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.state = core.state
        self.router = Router(self.prefix)
        self.register()

    def register(self) -> None:
        """Add the routes of this service to ``self.router``."""
        raise NotImplementedError

    def is_public(self, req: Request) -> bool:
        """Whether the request may come without a token (version discovery)."""
        return False

    def prepare(self, req: Request) -> None:
        """Inspect a request before routing (microversion negotiation)."""

    def finish(self, req: Request, resp: Response) -> None:
        """Adjust a response after routing (microversion headers)."""

    def render_error(self, err: ApiError) -> Response:
        """Render an error the way this service does; Nova and Cinder style by default."""
        key = _NOVA_ERROR_KEYS.get(
            err.status, "computeFault" if err.status >= 500 else "badRequest"
        )
        return json_response(
            err.status, {key: {"code": err.status, "message": err.message}}, err.headers
        )


_NOVA_ERROR_KEYS = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    406: "notAcceptable",
    409: "conflictingRequest",
    413: "overLimit",
    415: "badMediaType",
    429: "overLimit",
    500: "computeFault",
    501: "notImplemented",
    503: "serviceUnavailable",
}

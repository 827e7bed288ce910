"""In-memory records of everything in the simulated cloud, guarded by one lock."""

from __future__ import annotations

import ipaddress
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cloudsim.config import DEFAULT_QUOTA


def new_id() -> str:
    """A UUID string, the id format of every OpenStack resource simulated here."""
    return str(uuid.uuid4())


# Nova power states (nova.compute.power_state).
NOSTATE = 0
RUNNING = 1
PAUSED = 3
SHUTDOWN = 4
CRASHED = 6
SUSPENDED = 7


@dataclass(slots=True, eq=False)
class Domain:
    """A Keystone domain."""

    id: str
    name: str


@dataclass(slots=True, eq=False)
class Project:
    """A Keystone project (tenant) with its quota."""

    id: str
    name: str
    domain_id: str
    quota: dict[str, int]


@dataclass(slots=True, eq=False)
class User:
    """A Keystone user and the roles it holds per project id."""

    id: str
    name: str
    domain_id: str
    password: str
    roles: dict[str, list[str]] = field(default_factory=dict)
    default_project_id: str | None = None


@dataclass(slots=True, eq=False)
class AppCredential:
    """A Keystone application credential, bound to one user and project."""

    id: str
    name: str
    secret: str
    user_id: str
    project_id: str
    roles: list[str]
    description: str = ""
    expires_at: float | None = None
    unrestricted: bool = False


@dataclass(slots=True, eq=False)
class Token:
    """An issued token; ``expires_at`` is real (wall-clock) time."""

    id: str
    user_id: str
    project_id: str | None
    domain_id: str | None
    methods: list[str]
    roles: list[str]
    issued_at: float
    expires_at: float
    app_cred_id: str | None = None
    audit_id: str = ""


@dataclass(slots=True, eq=False)
class Flavor:
    """A Nova flavor."""

    id: str
    name: str
    vcpus: int
    ram: int
    disk: int
    ephemeral: int = 0
    swap: int = 0
    description: str | None = None
    extra_specs: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class Image:
    """A Glance image."""

    id: str
    name: str
    seq: int
    created: float
    size: int = 21430272
    min_disk: int = 0
    min_ram: int = 0
    disk_format: str = "qcow2"
    container_format: str = "bare"
    visibility: str = "public"
    status: str = "active"
    owner: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)


class IpPool:
    """Hands out host addresses of a CIDR in order, reusing released ones only at the end.

    Late reuse matters: a desktop process of a deleted server may still be closing on an
    address when a new server is built.
    """

    def __init__(self, cidr: str, reserved: int = 1) -> None:
        self.network = ipaddress.IPv4Network(cidr, strict=False)
        self._next = int(self.network.network_address) + 1 + reserved
        self._last = int(self.network.broadcast_address) - 1
        self._released: deque[int] = deque()
        self._taken: set[int] = set()

    @property
    def gateway(self) -> str:
        """The first host address, kept for the router as Neutron does."""
        return str(self.network.network_address + 1)

    def allocate(self, wanted: str | None = None) -> str:
        """Take an address (a specific one if asked); raises LookupError when exhausted."""
        if wanted is not None:
            value = int(ipaddress.IPv4Address(wanted))
            if ipaddress.IPv4Address(value) not in self.network or value in self._taken:
                raise LookupError(wanted)
            self._taken.add(value)
            return wanted
        while self._next <= self._last:
            value = self._next
            self._next += 1
            # .0 and .255 are valid in a wide subnet but confuse people reading logs.
            if value & 0xFF in (0, 255) or value in self._taken:
                continue
            self._taken.add(value)
            return str(ipaddress.IPv4Address(value))
        while self._released:
            value = self._released.popleft()
            if value not in self._taken:
                self._taken.add(value)
                return str(ipaddress.IPv4Address(value))
        raise LookupError("pool exhausted")

    def is_free(self, address: str) -> bool:
        """Whether a specific address belongs to the pool and is not taken."""
        try:
            value = int(ipaddress.IPv4Address(address))
        except ValueError:
            return False
        host = ipaddress.IPv4Address(value)
        return (
            host in self.network
            and value not in self._taken
            and host not in (self.network.network_address, self.network.broadcast_address)
        )

    def release(self, address: str) -> None:
        """Give an address back."""
        value = int(ipaddress.IPv4Address(address))
        if value in self._taken:
            self._taken.discard(value)
            self._released.append(value)


@dataclass(slots=True, eq=False)
class Network:
    """A Neutron network."""

    id: str
    name: str
    project_id: str
    external: bool
    shared: bool
    created: float
    subnet_ids: list[str] = field(default_factory=list)
    mtu: int = 1442


@dataclass(slots=True, eq=False)
class Subnet:
    """A Neutron IPv4 subnet with its allocation pool."""

    id: str
    name: str
    network_id: str
    project_id: str
    pool: IpPool
    created: float


@dataclass(slots=True, eq=False)
class Port:
    """A Neutron port; ``device_id`` is the server id for instance ports."""

    id: str
    network_id: str
    subnet_id: str
    project_id: str
    mac: str
    ip: str
    device_id: str
    device_owner: str
    status: str
    security_group_ids: list[str]
    created: float
    updated: float
    name: str = ""


@dataclass(slots=True, eq=False)
class FloatingIp:
    """A Neutron floating IP."""

    id: str
    address: str
    network_id: str
    project_id: str
    router_id: str
    created: float
    updated: float
    port_id: str | None = None
    fixed_ip: str | None = None
    description: str = ""


@dataclass(slots=True, eq=False)
class SecurityGroup:
    """A Neutron security group with its rules as plain dicts."""

    id: str
    name: str
    project_id: str
    description: str
    created: float
    rules: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class Attachment:
    """A volume attached to a server."""

    id: str
    volume_id: str
    server_id: str
    device: str
    attached_at: float
    delete_on_termination: bool = False
    tag: str | None = None


@dataclass(slots=True, eq=False)
class Volume:
    """A Cinder volume."""

    id: str
    name: str | None
    project_id: str
    user_id: str
    size: int
    status: str
    availability_zone: str
    created: float
    updated: float
    description: str | None = None
    image_id: str | None = None
    volume_type: str = "lvmdriver-1"
    metadata: dict[str, str] = field(default_factory=dict)
    attachment: Attachment | None = None
    gen: int = 0


@dataclass(slots=True, eq=False)
class Keypair:
    """A Nova keypair, owned by a user."""

    name: str
    user_id: str
    public_key: str
    fingerprint: str
    created: float
    type: str = "ssh"


@dataclass(slots=True, eq=False)
class Server:
    """A Nova instance.

    ``cache`` holds the encoded JSON views by microversion bucket; :meth:`touch` must be
    called on every change so listings of thousands of servers stay a byte join.
    """

    id: str
    seq: int
    name: str
    project_id: str
    user_id: str
    flavor: Flavor
    image_id: str
    availability_zone: str
    created: float
    updated: float
    hostname: str
    vm_state: str = "building"
    task_state: str | None = "scheduling"
    power_state: int = NOSTATE
    launched_at: float | None = None
    terminated_at: float | None = None
    deleted: bool = False
    networked: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    description: str | None = None
    user_data: str | None = None
    key_name: str | None = None
    security_groups: list[str] = field(default_factory=lambda: ["default"])
    port_ids: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    fault: dict[str, Any] | None = None
    locked: bool = False
    locked_reason: str | None = None
    fault_mode: str | None = None
    config_drive: str = ""
    reservation_id: str = ""
    host: str = "compute-0"
    backed: bool = True
    gen: int = 0
    cache: dict[int, bytes] = field(default_factory=dict)

    def touch(self, now: float | None = None) -> None:
        """Record a change: bump ``updated`` and drop the cached views."""
        self.updated = time.time() if now is None else now
        self.cache.clear()


class CloudState:
    """All records of one simulated cloud.

    One re-entrant lock guards everything: handlers hold it for their whole run, which
    keeps the simulation simple to reason about and is fast enough for 10k servers.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.domains: dict[str, Domain] = {}
        self.projects: dict[str, Project] = {}
        self.users: dict[str, User] = {}
        self.app_creds: dict[str, AppCredential] = {}
        self.tokens: dict[str, Token] = {}
        # Told (floating, fixed-or-None) whenever a floating IP is (dis)associated.
        self.fip_hook: Callable[[str, str | None], None] | None = None
        self.reset_resources()

    def reset_resources(self) -> None:
        """Forget every resource but keep identity (projects, users, tokens)."""
        self.flavors: dict[str, Flavor] = {}
        self.images: dict[str, Image] = {}
        self.networks: dict[str, Network] = {}
        self.subnets: dict[str, Subnet] = {}
        self.ports: dict[str, Port] = {}
        self.ports_by_device: dict[str, list[Port]] = {}
        self.ports_by_ip: dict[str, Port] = {}
        self.floating_ips: dict[str, FloatingIp] = {}
        self.floating_by_port: dict[str, FloatingIp] = {}
        self.security_groups: dict[str, SecurityGroup] = {}
        self.routers: dict[str, dict[str, Any]] = {}
        self.servers: dict[str, Server] = {}
        # Append-only creation order; index lets a marker jump straight to its place.
        self.server_order: list[Server] = []
        self.server_index: dict[str, int] = {}
        self.volumes: dict[str, Volume] = {}
        self.keypairs: dict[tuple[str, str], Keypair] = {}
        self.usage: dict[str, dict[str, int]] = {}
        self.default_quota: dict[str, int] = dict(DEFAULT_QUOTA)
        self.server_seq = 0
        self.image_seq = 0

    # -- identity lookups -------------------------------------------------------------
    def domain_by_name_or_id(self, ref: dict[str, Any] | None) -> Domain | None:
        """Resolve a ``{"id"|"name": ...}`` domain reference."""
        if not ref:
            return None
        if "id" in ref:
            return self.domains.get(str(ref["id"]))
        name = ref.get("name")
        return next((d for d in self.domains.values() if d.name == name), None)

    def project_by_name(self, name: str, domain_id: str | None = None) -> Project | None:
        """Find a project by name (and domain)."""
        for project in self.projects.values():
            if project.name == name and (domain_id is None or project.domain_id == domain_id):
                return project
        return None

    def user_by_name(self, name: str, domain_id: str | None = None) -> User | None:
        """Find a user by name (and domain)."""
        for user in self.users.values():
            if user.name == name and (domain_id is None or user.domain_id == domain_id):
                return user
        return None

    # -- quota and usage ---------------------------------------------------------------
    def quota_of(self, project_id: str) -> dict[str, int]:
        """Effective quota of a project: its overrides on top of the defaults."""
        project = self.projects.get(project_id)
        merged = dict(self.default_quota)
        if project is not None:
            merged.update(project.quota)
        return merged

    def usage_of(self, project_id: str) -> dict[str, int]:
        """Mutable usage counters of a project (instances, cores, ram)."""
        usage = self.usage.get(project_id)
        if usage is None:
            usage = self.usage[project_id] = {"instances": 0, "cores": 0, "ram": 0}
        return usage

    # -- servers -----------------------------------------------------------------------
    def add_server(self, server: Server) -> None:
        """Register a new server at the end of the creation order."""
        self.servers[server.id] = server
        self.server_index[server.id] = len(self.server_order)
        self.server_order.append(server)

    def live_server(self, server_id: str, project_id: str | None) -> Server | None:
        """A server that is not yet deleted and visible to the project (None = any)."""
        server = self.servers.get(server_id)
        if server is None or server.deleted:
            return None
        if project_id is not None and server.project_id != project_id:
            return None
        return server

    def add_port(self, port: Port) -> None:
        """Register a port in the id, device and address indexes."""
        self.ports[port.id] = port
        self.ports_by_device.setdefault(port.device_id, []).append(port)
        self.ports_by_ip[port.ip] = port

    def remove_port(self, port: Port) -> None:
        """Remove a port, its indexes and any floating IP association; frees its address."""
        self.ports.pop(port.id, None)
        siblings = self.ports_by_device.get(port.device_id)
        if siblings is not None:
            siblings[:] = [p for p in siblings if p.id != port.id]
            if not siblings:
                del self.ports_by_device[port.device_id]
        if self.ports_by_ip.get(port.ip) is port:
            del self.ports_by_ip[port.ip]
        fip = self.floating_by_port.pop(port.id, None)
        if fip is not None:
            fip.port_id = None
            fip.fixed_ip = None
            fip.updated = time.time()
            if self.fip_hook is not None:
                self.fip_hook(fip.address, None)
        subnet = self.subnets.get(port.subnet_id)
        if subnet is not None:
            subnet.pool.release(port.ip)

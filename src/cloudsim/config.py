"""Settings of a simulated cloud: who exists, how long things take, what is allowed."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

#: Defaults as shipped by Nova, Neutron and Cinder; -1 means unlimited.
DEFAULT_QUOTA: dict[str, int] = {
    # nova
    "instances": 10,
    "cores": 20,
    "ram": 51200,
    "key_pairs": 100,
    "metadata_items": 128,
    "server_groups": 10,
    "server_group_members": 10,
    # neutron
    "floatingip": 50,
    "network": 100,
    "subnet": 100,
    "port": 500,
    "router": 10,
    "security_group": 10,
    "security_group_rule": 100,
    # cinder
    "volumes": 10,
    "gigabytes": 1000,
    "snapshots": 10,
}

#: Friendly spellings accepted on the command line and in the Python API.
QUOTA_ALIASES = {
    "floating_ips": "floatingip",
    "floatingips": "floatingip",
    "floating-ips": "floatingip",
    "ports": "port",
    "networks": "network",
    "security_groups": "security_group",
    "keypairs": "key_pairs",
}


#: Page caps as shipped: Nova ``[api] max_limit``, Glance ``api_limit_max``, Cinder
#: ``osapi_max_limit``; Neutron's ``pagination_max_limit`` is off (-1) unless an operator sets it.
DEFAULT_MAX_LIMITS: dict[str, int | None] = {
    "compute": 1000,
    "image": 1000,
    "volume": 1000,
    "network": None,
}


def normalize_max_limits(value: int | dict[str, int | None] | None) -> dict[str, int | None]:
    """Page caps per service from one number (every service) or a mapping by service."""
    limits = dict(DEFAULT_MAX_LIMITS)
    if value is None:
        return limits
    if isinstance(value, int):
        return {name: value for name in limits}
    for name, cap in value.items():
        if name not in limits:
            raise ValueError(f"unknown service {name!r}; known: {', '.join(sorted(limits))}")
        limits[name] = cap
    for name, cap in limits.items():
        if cap is not None and cap < 1:
            raise ValueError(f"the page cap of {name} must be at least 1")
    return limits


def parse_version(text: str) -> tuple[int, int]:
    """``"2.60"`` → ``(2, 60)``; anything else is a ValueError."""
    major, dot, minor = str(text).partition(".")
    if not dot or not major.isdigit() or not minor.isdigit():
        raise ValueError(f"a microversion looks like 2.60, not {text!r}")
    return int(major), int(minor)


def normalize_quota(values: dict[str, int]) -> dict[str, int]:
    """Map aliases to canonical quota names and reject unknown ones."""
    out: dict[str, int] = {}
    for name, value in values.items():
        key = QUOTA_ALIASES.get(name, name)
        if key not in DEFAULT_QUOTA:
            raise ValueError(f"unknown quota {name!r}; known: {', '.join(sorted(DEFAULT_QUOTA))}")
        out[key] = int(value)
    return out


@dataclass(slots=True)
class Timings:
    """Simulated seconds each operation takes (scaled by the clock speed)."""

    build: float = 1.0
    start: float = 0.5
    stop: float = 0.5
    suspend: float = 0.5
    resume: float = 0.5
    reboot: float = 0.5
    delete: float = 0.5
    volume: float = 0.2
    error_after_build: float = 1.0

    def update(self, **values: float) -> None:
        """Change some timings; unknown names are an error."""
        names = {f.name for f in fields(self)}
        for name, value in values.items():
            if name not in names:
                raise ValueError(f"unknown timing {name!r}; known: {', '.join(sorted(names))}")
            if value < 0:
                raise ValueError("timings must not be negative")
            setattr(self, name, float(value))

    def as_dict(self) -> dict[str, float]:
        """Plain-dict view for the control API."""
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


@dataclass(slots=True)
class ProjectSpec:
    """A project to create at start-up, with its users (name → password)."""

    name: str
    domain: str = "Default"
    users: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> ProjectSpec:
        """Parse ``name`` or ``name@domain``; the project gets a same-named user.

        The user's password is ``password``, like a devstack account.
        """
        name, _, domain = text.strip().partition("@")
        if not name:
            raise ValueError("empty project name")
        return cls(name=name, domain=domain or "Default", users={name: "password"})


@dataclass(slots=True)
class SimConfig:
    """Everything a :class:`cloudsim.server.CloudSim` is built from."""

    host: str = "127.0.0.1"
    port: int = 0
    region: str = "RegionOne"
    projects: list[ProjectSpec] = field(default_factory=list)
    quota: dict[str, int] = field(default_factory=dict)
    clock_speed: float = 1.0
    timings: Timings = field(default_factory=Timings)
    token_ttl: float = 3600.0
    availability_zones: list[str] = field(default_factory=lambda: ["nova"])
    fixed_cidr: str = "127.100.0.0/14"
    floating_cidr: str = "127.200.0.0/16"
    metadata_host: str = "127.0.0.1"
    metadata_port: int | None = 0
    backing: str | None = None
    vnc_port: int = 5900
    vnc_password: str | None = None
    display_base: int = 100
    request_log_size: int = 100_000
    seed: int = 0
    max_microversion: tuple[int, int] = (2, 100)
    max_limits: dict[str, int | None] = field(default_factory=lambda: dict(DEFAULT_MAX_LIMITS))
    # A cloud (or proxy) that ignores list filters such as ``tags`` or ``port_id`` and
    # answers with everything: what a careful client must survive.
    ignore_filters: bool = False

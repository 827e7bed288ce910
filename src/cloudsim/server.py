"""CloudSim: start a simulated OpenStack cloud in-process, and steer it from Python."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from cloudsim.app import ApiApp, Listener, MetadataApp
from cloudsim.cinder import Cinder
from cloudsim.config import (
    ProjectSpec,
    SimConfig,
    Timings,
    normalize_max_limits,
    normalize_quota,
    parse_version,
)
from cloudsim.control import Control, ControlService
from cloudsim.core import Core
from cloudsim.faults import FaultRule, LatencyRule
from cloudsim.glance import Glance
from cloudsim.keystone import Keystone
from cloudsim.nat import PortForwarder
from cloudsim.neutron import Neutron
from cloudsim.nova import Nova
from cloudsim.xvnc import XvncBacking


class CloudSim:
    """A simulated OpenStack cloud (Keystone, Nova, Glance, Neutron, Cinder, metadata).

    Everything is served on one port (``sim.url``) except the metadata service, which has
    its own listener (``sim.metadata_url``) because it identifies callers by address.

    Example::

        sim = CloudSim(projects=["demo"], quota={"instances": 20}, clock_speed=20).start()
        conn = openstack.connection.Connection(**sim.credentials("demo"))
        ...
        sim.stop()
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        projects: Iterable[str | ProjectSpec] | None = None,
        quota: dict[str, int] | None = None,
        clock_speed: float = 1.0,
        backing: str | None = None,
        *,
        metadata_host: str = "127.0.0.1",
        metadata_port: int | None = 0,
        token_ttl: float = 3600.0,
        timings: dict[str, float] | None = None,
        availability_zones: list[str] | None = None,
        region: str = "RegionOne",
        fixed_cidr: str = "127.100.0.0/14",
        floating_cidr: str = "127.200.0.0/16",
        vnc_port: int = 5900,
        vnc_password: str | None = None,
        display_base: int = 100,
        max_microversion: str = "2.100",
        max_limit: int | dict[str, int | None] | None = None,
        ignore_filters: bool = False,
        request_log_size: int = 100_000,
        seed: int = 0,
    ) -> None:
        if backing not in (None, "none", "xvnc"):
            raise ValueError(f"unknown backing {backing!r}; use 'xvnc' or None")
        specs = [
            p if isinstance(p, ProjectSpec) else ProjectSpec.parse(p) for p in (projects or [])
        ]
        timing = Timings()
        timing.update(**(timings or {}))
        self.config = SimConfig(
            host=host,
            port=port,
            region=region,
            projects=specs,
            quota=normalize_quota(dict(quota or {})),
            clock_speed=clock_speed,
            timings=timing,
            token_ttl=token_ttl,
            availability_zones=list(availability_zones or ["nova"]),
            fixed_cidr=fixed_cidr,
            floating_cidr=floating_cidr,
            metadata_host=metadata_host,
            metadata_port=metadata_port,
            backing=None if backing == "none" else backing,
            vnc_port=vnc_port,
            vnc_password=vnc_password,
            display_base=display_base,
            request_log_size=request_log_size,
            seed=seed,
            max_microversion=parse_version(max_microversion),
            max_limits=normalize_max_limits(max_limit),
            ignore_filters=ignore_filters,
        )
        self.backing: XvncBacking | None = None
        self.forwarder: PortForwarder | None = None
        self.core: Core | None = None
        self.control: Control | None = None
        self._api: Listener | None = None
        self._metadata: Listener | None = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> CloudSim:
        """Bind the ports and start serving; returns self."""
        if self.core is not None:
            raise RuntimeError("CloudSim already started")
        config = self.config
        if config.backing == "xvnc":
            self.backing = XvncBacking(
                port=config.vnc_port, password=config.vnc_password, display_base=config.display_base
            )
        core = self.core = Core(config, self.backing)
        if self.backing is not None:
            # Desktops must be reachable through floating IPs too, as with Neutron's DNAT.
            self.forwarder = PortForwarder([config.vnc_port])
            core.state.fip_hook = self.forwarder
        control = self.control = Control(core, self._desktops)
        services = [Keystone(core), Nova(core), Glance(core), Neutron(core), Cinder(core)]
        self._api = Listener(
            config.host,
            config.port,
            ApiApp(core, services, ControlService(core, control)),
            "cloudsim-api",
        )
        core.base_url = f"http://{config.host}:{self._api.port}"
        if config.metadata_port is not None:
            self._metadata = Listener(
                config.metadata_host, config.metadata_port, MetadataApp(core), "cloudsim-metadata"
            )
            core.metadata_url = f"http://{config.metadata_host}:{self._metadata.port}"
        self._stopping.clear()
        self._ticker = threading.Thread(target=self._tick, name="cloudsim-clock", daemon=True)
        self._ticker.start()
        return self

    def stop(self) -> None:
        """Stop serving, stop every desktop, forget the state."""
        self._stopping.set()
        if self.core is not None:
            self.core.scheduler.wakeup.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        for listener in (self._api, self._metadata):
            if listener is not None:
                listener.close()
        if self.forwarder is not None:
            self.forwarder.close()
        if self.backing is not None:
            self.backing.close()
        self.forwarder = None
        self._api = self._metadata = self._ticker = None
        self.backing = None
        self.core = None
        self.control = None

    def __enter__(self) -> CloudSim:
        return self.start() if self.core is None else self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _tick(self) -> None:
        """Fire due events on time, so desktops start and stop even when nobody polls."""
        core = self._core
        scheduler = core.scheduler
        while not self._stopping.is_set():
            scheduler.wakeup.clear()
            with core.state.lock:
                scheduler.run_due()
                due = scheduler.next_due()
            timeout = 0.2
            if due is not None:
                timeout = min(timeout, core.clock.real_seconds(due - core.clock.now()))
            if timeout > 0:
                scheduler.wakeup.wait(timeout)

    @property
    def _core(self) -> Core:
        if self.core is None:
            raise RuntimeError("CloudSim is not started")
        return self.core

    @property
    def _control(self) -> Control:
        if self.control is None:
            raise RuntimeError("CloudSim is not started")
        return self.control

    def _desktops(self) -> list[dict[str, object]]:
        return self.backing.desktops() if self.backing is not None else []

    # -- addresses ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL of the API, e.g. ``http://127.0.0.1:PORT``."""
        return self._core.base_url

    @property
    def port(self) -> int:
        """The bound API port."""
        assert self._api is not None
        return self._api.port

    @property
    def auth_url(self) -> str:
        """Keystone v3 URL to give clients."""
        return f"{self.url}/identity/v3"

    @property
    def metadata_url(self) -> str:
        """Base URL of the metadata service (stands in for http://169.254.169.254)."""
        if self._core.metadata_url is None:
            raise RuntimeError("metadata service disabled (metadata_port=None)")
        return self._core.metadata_url

    def credentials(
        self,
        project: str = "demo",
        user: str | None = None,
        password: str = "password",  # noqa: S107 - every simulated user's default
        **extra: Any,
    ) -> dict[str, Any]:
        """Keyword arguments for ``openstack.connection.Connection``."""
        project_obj = self._core.find_project(project)
        domain = self._core.state.domains[project_obj.domain_id].name
        args: dict[str, Any] = {
            "auth_url": self.auth_url,
            "username": user or project,
            "password": password,
            "project_name": project,
            "user_domain_name": domain,
            "project_domain_name": domain,
            "region_name": self.config.region,
        }
        args.update(extra)
        return args

    def clouds_yaml(self, name: str = "cloudsim", project: str = "demo") -> str:
        """A clouds.yaml document for this simulator."""
        creds = self.credentials(project)
        return (
            f"clouds:\n  {name}:\n    region_name: {creds['region_name']}\n"
            f"    auth:\n      auth_url: {creds['auth_url']}\n"
            f"      username: {creds['username']}\n      password: {creds['password']}\n"
            f"      project_name: {creds['project_name']}\n"
            f"      user_domain_name: {creds['user_domain_name']}\n"
            f"      project_domain_name: {creds['project_domain_name']}\n"
        )

    # -- control --------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Addresses, clock, counts and desktops."""
        return self._control.info()

    def reset(self) -> None:
        """Drop every resource, fault, latency rule and log entry (identity survives)."""
        self._control.reset()
        if self.backing is not None:
            self.backing.wait_idle()

    def set_clock_speed(self, speed: float) -> None:
        """Simulated seconds per real second."""
        self._control.set_clock_speed(speed)

    def advance_clock(self, seconds: float) -> None:
        """Jump simulated time forward (finishes pending builds and actions at once)."""
        self._control.advance_clock(seconds)

    def set_timings(self, **values: float) -> dict[str, float]:
        """Durations in simulated seconds: build, start, stop, suspend, resume, reboot,
        delete, volume, error_after_build."""
        return self._control.set_timings(**values)

    def behaviour(self) -> dict[str, Any]:
        """Page caps per service, whether list filters are ignored, the top microversion."""
        return self._control.behaviour()

    def set_behaviour(
        self,
        *,
        max_limit: int | dict[str, int | None] | None = None,
        ignore_filters: bool | None = None,
        max_microversion: str | None = None,
        down_cell: list[str] | None = None,
    ) -> dict[str, Any]:
        """Behave like another cloud until ``reset()``: ``max_limit`` caps pages (one
        number, or by service: compute, network, image, volume), ``ignore_filters``
        answers lists with everything, ``max_microversion`` refuses newer compute calls,
        ``down_cell`` puts these servers in a cell that does not answer (``[]``: none)."""
        return self._control.set_behaviour(
            max_limit=max_limit,
            ignore_filters=ignore_filters,
            max_microversion=max_microversion,
            down_cell=down_cell,
        )

    def inject_fault(
        self,
        kind: str | int,
        *,
        method: str = "*",
        path: str = "",
        times: int | None = 1,
        rate: float = 1.0,
        skip: int = 0,
        retry_after: float | None = None,
        message: str | None = None,
        name: str | None = None,
    ) -> int:
        """Add a fault rule; returns its id. See :class:`cloudsim.faults.FaultRule`."""
        rule: FaultRule = self._core.faults.add_fault(
            kind,
            method=method,
            path=path,
            times=times,
            rate=rate,
            skip=skip,
            retry_after=retry_after,
            message=message,
            name=name,
        )
        return rule.id

    def add_latency(
        self, seconds: float, *, method: str = "*", path: str = "", jitter: float = 0.0
    ) -> int:
        """Add real latency to matching requests; returns the rule id."""
        rule: LatencyRule = self._core.faults.add_latency(
            seconds, method=method, path=path, jitter=jitter
        )
        return rule.id

    def remove_rule(self, rule_id: int) -> bool:
        """Remove a fault or latency rule."""
        return self._core.faults.remove(rule_id)

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        self._core.faults.clear_faults()

    def clear_latency(self) -> None:
        """Remove every latency rule."""
        self._core.faults.clear_latency()

    def faults(self) -> list[dict[str, Any]]:
        """The fault rules still armed."""
        return self._core.faults.faults()

    def requests(
        self,
        *,
        since: int = 0,
        method: str | None = None,
        path: str | None = None,
        status: int | None = None,
    ) -> list[dict[str, Any]]:
        """The request log (path is a regex searched in the request path)."""
        return [
            e.as_dict()
            for e in self._core.log.entries(since=since, method=method, path=path, status=status)
        ]

    def request_count(
        self, method: str | None = None, path: str | None = None, status: int | None = None
    ) -> int:
        """How many logged requests match."""
        return len(self._core.log.entries(method=method, path=path, status=status))

    @property
    def last_request_seq(self) -> int:
        """Sequence number of the newest logged request (use as ``since``)."""
        return self._core.log.last_seq

    def counts(self) -> dict[str, Any]:
        """Request totals by route template, status and service."""
        return self._core.log.counts()

    def clear_requests(self) -> None:
        """Empty the request log and counters."""
        self._core.log.clear()

    def seed_servers(self, count: int, **options: Any) -> list[str]:
        """Create many servers at once (bypasses quota); see Control.seed_servers."""
        return self._control.seed_servers(count, **options)

    def seed_images(self, count: int, name_prefix: str = "image") -> list[str]:
        """Register more images."""
        return self._control.seed_images(count, name_prefix=name_prefix)

    def set_server_state(self, server_id: str, status: str, message: str | None = None) -> None:
        """Force ACTIVE, SHUTOFF, SUSPENDED, ERROR or DELETED."""
        self._control.set_server_state(server_id, status, message)

    def server_address(self, server_id: str) -> str | None:
        """The fixed IP of a server."""
        return self._control.server_address(server_id)

    def servers(self, project: str | None = None) -> list[dict[str, Any]]:
        """Compact listing of all servers (deleted ones included)."""
        return self._control.servers(project)

    def expire_tokens(self) -> int:
        """Invalidate every token issued so far."""
        return self._control.expire_tokens()

    def set_token_ttl(self, seconds: float) -> None:
        """Lifetime of tokens issued from now on."""
        self._control.set_token_ttl(seconds)

    def set_quota(self, project: str, **values: int) -> dict[str, int]:
        """Override quota values (instances, cores, ram, floatingip, volumes, ...)."""
        return self._control.set_quota(project, **values)

    def add_project(
        self, name: str, domain: str = "Default", users: dict[str, str] | None = None
    ) -> str:
        """Create a project with users; returns its id."""
        return self._control.add_project(name, domain, users)

    def project_id(self, name: str) -> str:
        """Id of a project by name."""
        return self._core.find_project(name).id

    def create_application_credential(
        self, user: str, project: str | None = None, **options: Any
    ) -> dict[str, str]:
        """Create an application credential; returns id and secret."""
        return self._control.create_application_credential(user, project, **options)

    def desktops(self) -> list[dict[str, object]]:
        """Running Xvnc desktops (xvnc backing)."""
        return self._desktops()

    def wait_backing_idle(self, timeout: float = 10.0) -> bool:
        """Wait until queued desktop starts and stops are done."""
        return self.backing.wait_idle(timeout) if self.backing is not None else True

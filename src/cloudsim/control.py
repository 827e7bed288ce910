"""The simulator's own control API (/_sim): clock, faults, latency, log, seeding, inspection."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from cloudsim.config import ProjectSpec, normalize_max_limits, normalize_quota, parse_version
from cloudsim.core import Core, Service
from cloudsim.lifecycle import NetworkRequest, ServerSpec, status_of
from cloudsim.state import AppCredential, Server
from cloudsim.web import ApiError, Request, Response, empty, int_arg, json_response

SEEDABLE = ("ACTIVE", "SHUTOFF", "SUSPENDED", "ERROR", "BUILD")


class Control:
    """Operations on a running simulation, shared by the HTTP control API and CloudSim."""

    def __init__(self, core: Core, desktops: Callable[[], list[dict[str, object]]]) -> None:
        self.core = core
        self.state = core.state
        self._desktops = desktops

    # -- clock and timings --------------------------------------------------------------
    def clock(self) -> dict[str, float]:
        """Speed and current simulated time."""
        return {"speed": self.core.clock.speed, "now": self.core.clock.now()}

    def set_clock_speed(self, speed: float) -> None:
        """Simulated seconds per real second from now on."""
        self.core.clock.set_speed(float(speed))
        self.core.scheduler.wakeup.set()

    def advance_clock(self, seconds: float) -> None:
        """Jump simulated time forward and apply everything that became due."""
        self.core.clock.advance(float(seconds))
        self.core.settle()

    def set_timings(self, **values: float) -> dict[str, float]:
        """Change operation durations (simulated seconds)."""
        self.core.config.timings.update(**values)
        return self.core.config.timings.as_dict()

    # -- behaviour ----------------------------------------------------------------------
    def behaviour(self) -> dict[str, Any]:
        """Page caps per service, whether list filters are ignored, the top microversion,
        the servers in a cell that does not answer."""
        core = self.core
        top = core.max_microversion
        return {
            "max_limits": dict(core.max_limits),
            "ignore_filters": core.ignore_filters,
            "max_microversion": f"{top[0]}.{top[1]}",
            "down_cell": sorted(core.down_cell),
        }

    def set_behaviour(
        self,
        *,
        max_limit: int | dict[str, int | None] | None = None,
        ignore_filters: bool | None = None,
        max_microversion: str | None = None,
        down_cell: list[str] | None = None,
    ) -> dict[str, Any]:
        """Behave like another cloud until the next reset: lower page caps (a next link
        whenever a page is full), filters ignored, an older compute API, these servers'
        cell down (``[]`` brings it back)."""
        core = self.core
        if max_limit is not None:
            core.max_limits = normalize_max_limits(max_limit)
        if ignore_filters is not None:
            core.ignore_filters = bool(ignore_filters)
        if max_microversion is not None:
            core.max_microversion = parse_version(max_microversion)
        if down_cell is not None:
            if isinstance(down_cell, str) or not all(isinstance(i, str) for i in down_cell):
                raise ValueError("down_cell is a list of server ids")
            with self.state.lock:
                unknown = [i for i in down_cell if i not in self.state.servers]
                if unknown:
                    raise ValueError(f"no server {unknown[0]}")
                core.down_cell = set(down_cell)
        return self.behaviour()

    # -- reset --------------------------------------------------------------------------
    def reset(self) -> None:
        """Drop every resource, rule and log entry; identity and tokens survive."""
        core = self.core
        with self.state.lock:
            if core.lifecycle.backing is not None:
                for server in self.state.servers.values():
                    if not server.deleted:
                        core.lifecycle.backing.server_down(server.id)
            core.scheduler.clear()
            if self.state.fip_hook is not None:
                for fip in self.state.floating_ips.values():
                    if fip.port_id:
                        self.state.fip_hook(fip.address, None)
            self.state.reset_resources()
            self.state.default_quota.update(normalize_quota(core.config.quota))
            for project in self.state.projects.values():
                project.quota.clear()
            core.populate_resources()
        core.faults.clear_faults()
        core.faults.clear_latency()
        core.log.clear()
        core.restore_behaviour()

    # -- seeding ------------------------------------------------------------------------
    def seed_servers(
        self,
        count: int,
        *,
        project: str = "demo",
        name_prefix: str = "seed",
        tags: list[str] | None = None,
        metadata: dict[str, str] | None = None,
        status: str = "ACTIVE",
        flavor: str = "1",
        image: str | None = None,
        user: str | None = None,
        with_backing: bool = False,
    ) -> list[str]:
        """Create ``count`` servers at once, bypassing quota; returns their ids.

        ``status`` BUILD runs the normal build on the clock; the others are immediate.
        Seeded servers get no real desktop unless ``with_backing`` is set.
        """
        status = status.upper()
        if status not in SEEDABLE:
            raise ApiError(400, f"status must be one of {', '.join(SEEDABLE)}")
        if count < 0:
            raise ApiError(400, "count must not be negative")
        with self.state.lock:
            target = self.core.find_project(project)
            flavor_obj = self.state.flavors.get(flavor) or next(
                (f for f in self.state.flavors.values() if f.name == flavor), None
            )
            if flavor_obj is None:
                raise ApiError(400, f"Flavor {flavor} could not be found.")
            image_id = image or next(iter(self.state.images))
            owner = next(
                (
                    u
                    for u in self.state.users.values()
                    if (user is None or user in (u.name, u.id)) and target.id in u.roles
                ),
                None,
            )
            if owner is None:
                raise ApiError(400, f"No user with a role on project {project}.")
            network = self.core.default_network()
            az = self.core.config.availability_zones[0]
            ids: list[str] = []
            for index in range(count):
                spec = ServerSpec(
                    project_id=target.id,
                    user_id=owner.id,
                    name=f"{name_prefix}-{index:05d}",
                    flavor=flavor_obj,
                    image_id=image_id,
                    availability_zone=az,
                    networks=[NetworkRequest(network)],
                    metadata=dict(metadata or {}),
                    tags=list(tags or []),
                )
                server = self.core.lifecycle.create(
                    spec, ready=None if status == "BUILD" else status, backed=with_backing
                )
                ids.append(server.id)
            return ids

    def seed_images(self, count: int, *, name_prefix: str = "image") -> list[str]:
        """Register ``count`` more public images."""
        with self.state.lock:
            return [self.core.add_image(f"{name_prefix}-{i:05d}").id for i in range(count)]

    # -- servers ------------------------------------------------------------------------
    def _server(self, server_id: str) -> Server:
        server = self.state.servers.get(server_id)
        if server is None:
            raise ApiError(404, f"Instance {server_id} could not be found.")
        return server

    def set_server_state(self, server_id: str, status: str, message: str | None = None) -> None:
        """Force a status: ACTIVE, SHUTOFF, SUSPENDED, ERROR (with message), SHELVED,
        SHELVED_OFFLOADED or DELETED."""
        with self.state.lock:
            self.core.lifecycle.force(self._server(server_id), status, message)

    def server_address(self, server_id: str) -> str | None:
        """The fixed IP of a server (its desktop's and metadata caller's address)."""
        with self.state.lock:
            return self.core.lifecycle.address_of(self._server(server_id))

    def servers(self, project: str | None = None) -> list[dict[str, Any]]:
        """A compact listing of every server, including deleted ones."""
        with self.state.lock:
            self.core.scheduler.run_due()
            project_id = self.core.find_project(project).id if project else None
            out = []
            for server in self.state.server_order:
                if project_id and server.project_id != project_id:
                    continue
                fip = None
                ports = self.state.ports_by_device.get(server.id, [])
                if ports and ports[0].id in self.state.floating_by_port:
                    fip = self.state.floating_by_port[ports[0].id].address
                out.append(
                    {
                        "id": server.id,
                        "name": server.name,
                        "status": status_of(server),
                        "task_state": server.task_state,
                        "image_id": server.image_id,
                        "project_id": server.project_id,
                        "address": ports[0].ip if ports else None,
                        "floating_ip": fip,
                        "tags": list(server.tags),
                    }
                )
            return out

    # -- identity -----------------------------------------------------------------------
    def expire_tokens(self) -> int:
        """Make every issued token invalid (clients then get 401 and must re-authenticate)."""
        with self.state.lock:
            now = time.time()
            live = [t for t in self.state.tokens.values() if t.expires_at > now]
            for token in live:
                token.expires_at = now - 1
            return len(live)

    def set_token_ttl(self, seconds: float) -> None:
        """Lifetime of tokens issued from now on (real seconds)."""
        self.core.config.token_ttl = float(seconds)

    def set_quota(self, project: str, **values: int) -> dict[str, int]:
        """Override quota values of one project; returns its effective quota."""
        with self.state.lock:
            target = self.core.find_project(project)
            try:
                target.quota.update(normalize_quota(values))
            except ValueError as exc:
                raise ApiError(400, str(exc)) from exc
            return self.state.quota_of(target.id)

    def add_project(
        self, name: str, domain: str = "Default", users: dict[str, str] | None = None
    ) -> str:
        """Create a project (and domain) with users name → password; returns its id."""
        spec = ProjectSpec(name, domain, users if users is not None else {name: "password"})
        return self.core.add_project(spec).id

    def create_application_credential(
        self,
        user: str,
        project: str | None = None,
        *,
        name: str | None = None,
        secret: str | None = None,
        roles: list[str] | None = None,
        expires_in: float | None = None,
    ) -> dict[str, str]:
        """Create an application credential directly; returns id, secret, name."""
        with self.state.lock:
            owner = next((u for u in self.state.users.values() if user in (u.name, u.id)), None)
            if owner is None:
                raise ApiError(404, f"Could not find user: {user}.")
            target = (
                self.core.find_project(project)
                if project
                else self.state.projects[owner.default_project_id or ""]
            )
            if target.id not in owner.roles:
                raise ApiError(400, f"User {user} has no role on project {target.name}.")
            cred = AppCredential(
                id=uuid.uuid4().hex,
                name=name or f"cred-{uuid.uuid4().hex[:8]}",
                secret=secret or uuid.uuid4().hex,
                user_id=owner.id,
                project_id=target.id,
                roles=roles or list(owner.roles[target.id]),
                expires_at=time.time() + expires_in if expires_in else None,
            )
            self.state.app_creds[cred.id] = cred
            return {
                "id": cred.id,
                "secret": cred.secret,
                "name": cred.name,
                "user_id": owner.id,
                "project_id": target.id,
            }

    def info(self) -> dict[str, Any]:
        """Where things are and how much there is."""
        with self.state.lock:
            live = sum(1 for s in self.state.servers.values() if not s.deleted)
            return {
                "url": self.core.base_url,
                "auth_url": f"{self.core.base_url}/identity/v3",
                "metadata_url": self.core.metadata_url,
                "region": self.core.config.region,
                "clock": self.clock(),
                "timings": self.core.config.timings.as_dict(),
                "servers": live,
                "tombstones": len(self.state.servers) - live,
                "projects": {p.name: p.id for p in self.state.projects.values()},
                "pending_events": len(self.core.scheduler),
                "backing": self.core.config.backing,
                "desktops": self._desktops(),
            }


class ControlService(Service):
    """HTTP face of :class:`Control` under /_sim (no token needed)."""

    name = "control"
    prefix = "/_sim"

    def __init__(self, core: Core, control: Control) -> None:
        self.control = control
        super().__init__(core)

    def is_public(self, req: Request) -> bool:
        """The control API takes no token."""
        return True

    def render_error(self, err: ApiError) -> Response:
        """``{"error": message}``."""
        return json_response(err.status, {"error": err.message, "status": err.status})

    def register(self) -> None:
        """Add the control routes."""
        add, ctl = self.router.add, self.control
        add("GET", "", lambda req: json_response(200, ctl.info()))
        add("POST", "/reset", self.do_reset)
        add("GET", "/clock", lambda req: json_response(200, ctl.clock()))
        add("PUT", "/clock", self.put_clock)
        add("POST", "/clock", self.put_clock)
        add("GET", "/timings", lambda req: json_response(200, self.core.config.timings.as_dict()))
        add("GET", "/behaviour", lambda req: json_response(200, ctl.behaviour()))
        add("PUT", "/behaviour", self.put_behaviour)
        add("PUT", "/timings", self.put_timings)
        add("GET", "/faults", lambda req: json_response(200, {"faults": self.core.faults.faults()}))
        add("POST", "/faults", self.post_fault)
        add("DELETE", "/faults", self.do_clear_faults)
        add("DELETE", "/faults/{rule_id}", self.delete_rule)
        add(
            "GET",
            "/latency",
            lambda req: json_response(200, {"latency": self.core.faults.latencies()}),
        )
        add("POST", "/latency", self.post_latency)
        add("DELETE", "/latency", self.do_clear_latency)
        add("DELETE", "/latency/{rule_id}", self.delete_rule)
        add("GET", "/requests", self.get_requests)
        add("DELETE", "/requests", self.do_clear_requests)
        add("GET", "/counts", lambda req: json_response(200, self.core.log.counts()))
        add("POST", "/seed/servers", self.seed_servers)
        add("POST", "/seed/images", self.seed_images)
        add(
            "GET",
            "/servers",
            lambda req: json_response(200, {"servers": ctl.servers(req.arg("project"))}),
        )
        add("PUT", "/servers/{server_id}/state", self.put_state)
        add("POST", "/servers/{server_id}/state", self.put_state)
        add(
            "POST",
            "/tokens/expire",
            lambda req: json_response(200, {"expired": ctl.expire_tokens()}),
        )
        add("PUT", "/quotas/{project}", self.put_quota)
        add("POST", "/projects", self.post_project)
        add("POST", "/application-credentials", self.post_app_cred)

    def do_reset(self, req: Request) -> Response:
        """Reset the simulation."""
        self.control.reset()
        return empty(204)

    def do_clear_faults(self, req: Request) -> Response:
        """Remove every fault rule."""
        self.core.faults.clear_faults()
        return empty(204)

    def do_clear_latency(self, req: Request) -> Response:
        """Remove every latency rule."""
        self.core.faults.clear_latency()
        return empty(204)

    def do_clear_requests(self, req: Request) -> Response:
        """Empty the request log."""
        self.core.log.clear()
        return empty(204)

    @staticmethod
    def _body(req: Request) -> dict[str, Any]:
        return req.json_object() if req.body else {}

    def put_clock(self, req: Request) -> Response:
        """``{"speed": F}`` and/or ``{"advance": seconds}``."""
        body = self._body(req)
        try:
            if "speed" in body:
                self.control.set_clock_speed(float(body["speed"]))
            if "advance" in body:
                self.control.advance_clock(float(body["advance"]))
        except (TypeError, ValueError) as exc:
            raise ApiError(400, str(exc)) from exc
        return json_response(200, self.control.clock())

    def put_behaviour(self, req: Request) -> Response:
        """``{"max_limit": 2 | {"compute": 100}, "ignore_filters": true,
        "max_microversion": "2.60", "down_cell": ["<server id>", ...]}``."""
        body = self._body(req)
        try:
            return json_response(
                200,
                self.control.set_behaviour(
                    max_limit=body.get("max_limit"),
                    ignore_filters=body.get("ignore_filters"),
                    max_microversion=body.get("max_microversion"),
                    down_cell=body.get("down_cell"),
                ),
            )
        except (TypeError, ValueError) as exc:
            raise ApiError(400, str(exc)) from exc

    def put_timings(self, req: Request) -> Response:
        """``{"build": 2.0, "stop": 0.5, ...}``."""
        try:
            values = {k: float(v) for k, v in self._body(req).items()}
            return json_response(200, self.control.set_timings(**values))
        except (TypeError, ValueError) as exc:
            raise ApiError(400, str(exc)) from exc

    def post_fault(self, req: Request) -> Response:
        """``{"kind": "503", "method": "GET", "path": "/servers", "times": 1, ...}``."""
        body = self._body(req)
        try:
            rule = self.core.faults.add_fault(
                str(body.pop("kind")),
                **{
                    k: v
                    for k, v in body.items()
                    if k
                    in ("method", "path", "times", "rate", "skip", "retry_after", "message", "name")
                },
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(400, f"bad fault rule: {exc}") from exc
        return json_response(201, rule.as_dict())

    def post_latency(self, req: Request) -> Response:
        """``{"seconds": 0.2, "method": "GET", "path": "/servers/detail", "jitter": 0}``."""
        body = self._body(req)
        try:
            rule = self.core.faults.add_latency(
                float(body.pop("seconds")),
                **{k: v for k, v in body.items() if k in ("method", "path", "jitter")},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(400, f"bad latency rule: {exc}") from exc
        return json_response(201, rule.as_dict())

    def delete_rule(self, req: Request) -> Response:
        """Remove one fault or latency rule."""
        rule_id = req.params["rule_id"]
        if not rule_id.isdigit() or not self.core.faults.remove(int(rule_id)):
            raise ApiError(404, f"no rule {rule_id}")
        return empty(204)

    def get_requests(self, req: Request) -> Response:
        """The request log; filters since, method, path (regex), status, limit."""
        status = int_arg(req, "status")
        entries = self.core.log.entries(
            since=int_arg(req, "since", 0) or 0,
            method=req.arg("method"),
            path=req.arg("path"),
            status=status,
            limit=int_arg(req, "limit"),
        )
        return json_response(
            200, {"requests": [e.as_dict() for e in entries], "last_seq": self.core.log.last_seq}
        )

    def seed_servers(self, req: Request) -> Response:
        """``{"count": 10000, "project": "demo", "tags": [...], "status": "ACTIVE"}``."""
        body = self._body(req)
        count = body.pop("count", None)
        if not isinstance(count, int):
            raise ApiError(400, "count (an integer) is required")
        allowed = (
            "project",
            "name_prefix",
            "tags",
            "metadata",
            "status",
            "flavor",
            "image",
            "user",
            "with_backing",
        )
        started = time.perf_counter()
        ids = self.control.seed_servers(count, **{k: v for k, v in body.items() if k in allowed})
        return json_response(201, {"ids": ids, "seconds": time.perf_counter() - started})

    def seed_images(self, req: Request) -> Response:
        """``{"count": 100, "name_prefix": "image"}``."""
        body = self._body(req)
        count = body.get("count")
        if not isinstance(count, int):
            raise ApiError(400, "count (an integer) is required")
        ids = self.control.seed_images(count, name_prefix=str(body.get("name_prefix", "image")))
        return json_response(201, {"ids": ids})

    def put_state(self, req: Request) -> Response:
        """``{"status": "ERROR", "message": "..."}``."""
        body = self._body(req)
        self.control.set_server_state(
            req.params["server_id"], str(body.get("status", "")), body.get("message")
        )
        return empty(204)

    def put_quota(self, req: Request) -> Response:
        """``{"instances": 5, "floatingip": 1}``."""
        values = {k: int(v) for k, v in self._body(req).items()}
        return json_response(200, self.control.set_quota(req.params["project"], **values))

    def post_project(self, req: Request) -> Response:
        """``{"name": "p", "domain": "Default", "users": {"alice": "secret"}}``."""
        body = self._body(req)
        if not body.get("name"):
            raise ApiError(400, "name is required")
        project_id = self.control.add_project(
            str(body["name"]), str(body.get("domain", "Default")), body.get("users")
        )
        return json_response(201, {"id": project_id})

    def post_app_cred(self, req: Request) -> Response:
        """``{"user": "demo", "project": "demo", "name": ..., "secret": ...}``."""
        body = self._body(req)
        if not body.get("user"):
            raise ApiError(400, "user is required")
        return json_response(
            201,
            self.control.create_application_credential(
                str(body["user"]),
                body.get("project"),
                name=body.get("name"),
                secret=body.get("secret"),
                roles=body.get("roles"),
                expires_in=body.get("expires_in"),
            ),
        )

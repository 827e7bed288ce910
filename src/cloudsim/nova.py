"""Nova 2.1: servers (list with filters and paging, get, update, delete, actions)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from cloudsim.core import AuthContext, Core, Service
from cloudsim.lifecycle import status_of
from cloudsim.nova_create import NovaCreate, ref_id
from cloudsim.nova_resources import NovaResources
from cloudsim.novaview import (
    ServerViews,
    microversion_headers,
    parse_microversion,
)
from cloudsim.state import Server
from cloudsim.web import (
    ApiError,
    Request,
    Response,
    dumps,
    empty,
    int_arg,
    json_response,
    parse_time,
)

MIN_VERSION = (2, 1)
# From this microversion Nova stands in for the servers of a cell that does not answer.
DOWN_CELL_VERSION = 69
_LEGACY = "X-OpenStack-Nova-API-Version"
_SORT_KEYS: dict[str, Callable[[Server], Any]] = {
    "created_at": lambda s: (s.created, s.seq),
    "updated_at": lambda s: s.updated,
    "launched_at": lambda s: s.launched_at or 0.0,
    "display_name": lambda s: s.name,
    "name": lambda s: s.name,
    "uuid": lambda s: s.id,
    "id": lambda s: s.seq,
    "vm_state": lambda s: s.vm_state,
    "task_state": lambda s: s.task_state or "",
    "power_state": lambda s: s.power_state,
    "availability_zone": lambda s: s.availability_zone,
}


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on", "t", "y")


class Nova(NovaCreate, NovaResources, Service):
    """The compute service under /compute."""

    name = "compute"
    prefix = "/compute"

    def __init__(self, core: Core) -> None:
        self.views = ServerViews(core)
        super().__init__(core)

    @property
    def max_version(self) -> tuple[int, int]:
        """The newest microversion this cloud speaks (steerable while it runs)."""
        return self.core.max_microversion

    def page_cap(self) -> int:
        """Nova's ``[api] max_limit``: the most items one page holds."""
        return self.core.max_limit("compute") or 1000

    def register(self) -> None:
        """Add the Nova routes."""
        add = self.router.add
        add("GET", "", self.versions)
        add("GET", "/v2.1", self.version)
        add("GET", "/v2.1/servers", lambda req: self.list_servers(req, detail=False))
        add("GET", "/v2.1/servers/detail", lambda req: self.list_servers(req, detail=True))
        add("POST", "/v2.1/servers", self.create)
        add("GET", "/v2.1/servers/{server_id}", self.show)
        add("PUT", "/v2.1/servers/{server_id}", self.update)
        add("DELETE", "/v2.1/servers/{server_id}", self.delete)
        add("POST", "/v2.1/servers/{server_id}/action", self.action)
        self.register_resources()

    def is_public(self, req: Request) -> bool:
        """Version documents need no token."""
        return req.method == "GET" and req.path.rstrip("/") in ("/compute", "/compute/v2.1")

    def prepare(self, req: Request) -> None:
        """Negotiate the microversion (406 outside the supported range)."""
        req.microversion = parse_microversion(
            req, "compute", _LEGACY, MIN_VERSION, self.max_version
        )

    def finish(self, req: Request, resp: Response) -> None:
        """Echo the negotiated microversion."""
        if req.microversion != (0, 0):
            resp.headers.update(microversion_headers("compute", req.microversion, _LEGACY))

    # -- discovery ------------------------------------------------------------------------
    def _version_doc(self) -> dict[str, Any]:
        top = self.max_version
        return {
            "id": "v2.1",
            "status": "CURRENT",
            "version": f"{top[0]}.{top[1]}",
            "min_version": "2.1",
            "updated": "2013-07-23T11:33:21Z",
            "links": [
                {"rel": "self", "href": f"{self.core.base_url}/compute/v2.1/"},
                {"rel": "describedby", "type": "text/html", "href": "http://docs.openstack.org/"},
            ],
            "media-types": [
                {
                    "base": "application/json",
                    "type": "application/vnd.openstack.compute+json;version=2.1",
                }
            ],
        }

    def versions(self, req: Request) -> Response:
        """GET /compute/: the versions document."""
        return json_response(200, {"versions": [self._version_doc()]})

    def version(self, req: Request) -> Response:
        """GET /compute/v2.1/: the version document with min and max microversion."""
        return json_response(200, {"version": self._version_doc()})

    # -- helpers ----------------------------------------------------------------------------
    def server_of(self, req: Request) -> Server:
        """The server named in the path, visible to the caller, or 404."""
        ctx: AuthContext = req.auth
        server = self.state.live_server(
            req.params["server_id"], None if ctx.is_admin else ctx.project_id
        )
        if server is None:
            raise ApiError(404, f"Instance {req.params['server_id']} could not be found.")
        if server.id in self.core.down_cell:
            # Nova's NovaException: an "Unexpected API Error" 500.
            raise ApiError(
                500,
                f"Cell of instance {server.id} is not responding or returned an exception, "
                "hence instance info is not available.",
            )
        return server

    def _detail_response(self, status: int, server: Server, req: Request) -> Response:
        body = b'{"server":' + self.views.detail(server, req.microversion[1]) + b"}"
        return Response(status, body)

    # -- list -------------------------------------------------------------------------------
    def _filters(
        self, req: Request, ctx: AuthContext
    ) -> tuple[list[Callable[[Server], bool]], bool]:
        """Predicates for the query, and whether deleted servers may appear."""
        minor = req.microversion[1]
        preds: list[Callable[[Server], bool]] = []
        all_tenants = ctx.is_admin and (
            req.arg("all_tenants") is not None
            and req.arg("all_tenants") not in ("0", "false", "False")
        )
        if all_tenants:
            wanted = req.arg("project_id") or req.arg("tenant_id")
            if wanted:
                preds.append(lambda s: s.project_id == wanted)
        else:
            own = ctx.project_id
            preds.append(lambda s: s.project_id == own)
        since_arg, before_arg = req.arg("changes-since"), req.arg("changes-before")
        since = parse_time(since_arg) if since_arg else None
        before = parse_time(before_arg) if before_arg and minor >= 66 else None
        if since is not None and before is not None and before < since:
            raise ApiError(
                400, "The value of changes-since must be less than or equal to changes-before."
            )
        if since is not None:
            preds.append(lambda s: s.updated >= since)
        if before is not None:
            preds.append(lambda s: s.updated <= before)
        include_deleted = since is not None or before is not None
        deleted_arg = req.arg("deleted")
        if ctx.is_admin and deleted_arg is not None:
            if _truthy(deleted_arg):
                preds.append(lambda s: s.deleted)
                include_deleted = True
            else:
                include_deleted = False
        statuses = {s.upper() for v in req.query.get("status", []) for s in v.split(",") if s}
        if statuses:
            if "DELETED" in statuses:
                include_deleted = True
            preds.append(lambda s: status_of(s) in statuses)
        if self.core.ignore_filters:
            return preds, include_deleted
        name = req.arg("name") or req.arg("display_name")
        if name:
            try:
                regex = re.compile(name, re.IGNORECASE)
            except re.error:
                regex = re.compile(re.escape(name), re.IGNORECASE)
            preds.append(lambda s: regex.search(s.name) is not None)
        if minor >= 26:
            self._tag_filters(req, preds)
        simple: dict[str, Callable[[Server], str | None]] = {
            "flavor": lambda s: s.flavor.id,
            "image": lambda s: s.image_id,
            "availability_zone": lambda s: s.availability_zone,
            "key_name": lambda s: s.key_name,
            "reservation_id": lambda s: s.reservation_id,
            "user_id": lambda s: s.user_id,
            "vm_state": lambda s: s.vm_state,
            "task_state": lambda s: s.task_state,
            "uuid": lambda s: s.id,
            "host": lambda s: s.host,
        }
        for param, getter in simple.items():
            value = req.arg(param)
            if value:
                wanted_value = ref_id(value) if param in ("flavor", "image") else value
                preds.append(lambda s, g=getter, w=wanted_value: g(s) == w)  # type: ignore[misc]
        ip = req.arg("ip")
        if ip:
            ip_regex = re.compile(
                re.escape(ip) if not any(c in ip for c in "^$*+?[](){}|\\") else ip
            )
            ports = self.state.ports_by_device
            preds.append(lambda s: any(ip_regex.search(p.ip) for p in ports.get(s.id, ())))
        locked = req.arg("locked")
        if locked is not None and minor >= 73:
            want_locked = _truthy(locked)
            preds.append(lambda s: s.locked == want_locked)
        return preds, include_deleted

    @staticmethod
    def _tag_filters(req: Request, preds: list[Callable[[Server], bool]]) -> None:
        def tags_of(param: str) -> set[str]:
            return {t for v in req.query.get(param, []) for t in v.split(",") if t}

        every, some = tags_of("tags"), tags_of("tags-any")
        not_every, not_some = tags_of("not-tags"), tags_of("not-tags-any")
        if every:
            preds.append(lambda s: every.issubset(s.tags))
        if some:
            preds.append(lambda s: not some.isdisjoint(s.tags))
        if not_every:
            preds.append(lambda s: not not_every.issubset(s.tags))
        if not_some:
            preds.append(lambda s: not_some.isdisjoint(s.tags))

    def _sorted(self, req: Request, servers: list[Server]) -> list[Server] | None:
        keys = [k for v in req.query.get("sort_key", []) for k in v.split(",") if k]
        if not keys:
            return None
        dirs = [d for v in req.query.get("sort_dir", []) for d in v.split(",") if d]
        result = list(servers)
        # Stable sorts applied from the least significant key give a multi-key sort.
        for pos in range(len(keys) - 1, -1, -1):
            getter = _SORT_KEYS.get(keys[pos])
            if getter is None:
                raise ApiError(
                    400, f"Invalid input for query parameters sort_key. Value: {keys[pos]}."
                )
            direction = dirs[pos] if pos < len(dirs) else (dirs[-1] if dirs else "desc")
            if direction not in ("asc", "desc"):
                raise ApiError(
                    400, f"Invalid input for query parameters sort_dir. Value: {direction}."
                )
            result.sort(key=getter, reverse=direction == "desc")
        return result

    def list_servers(self, req: Request, *, detail: bool) -> Response:
        """GET /servers and /servers/detail with filters, sorting, limit and marker."""
        ctx: AuthContext = req.auth
        preds, include_deleted = self._filters(req, ctx)
        if not include_deleted:
            preds.insert(0, lambda s: not s.deleted)
        down = self.core.down_cell
        stand_ins: list[Server] = []
        if down:
            # A down cell's servers cannot be filtered, sorted or paged: Nova (2.69+)
            # stands in for them only in a listing that asks for none of that (all
            # projects aside), and otherwise, and always before 2.69, leaves them out.
            minor = req.microversion[1]
            if minor >= DOWN_CELL_VERSION and set(req.query) <= {"all_tenants"}:
                stand_ins = [
                    s
                    for s in reversed(self.state.server_order)
                    if s.id in down and all(p(s) for p in preds)
                ]
            preds.append(lambda s: s.id not in down)
        cap = self.page_cap()
        limit = min(int_arg(req, "limit", cap) or cap, cap)
        marker = req.arg("marker")
        order = self.state.server_order
        page: list[Server] = []
        if req.arg("sort_key"):
            candidates = [s for s in order if all(p(s) for p in preds)]
            ordered = self._sorted(req, candidates)
            assert ordered is not None
            start = 0
            if marker:
                found = next((i for i, s in enumerate(ordered) if s.id == marker), None)
                if found is None:
                    raise ApiError(400, f"marker [{marker}] not found")
                start = found + 1
            page = ordered[start : start + limit]
        else:
            top = len(order)
            if marker:
                index = self.state.server_index.get(marker)
                if index is None:
                    raise ApiError(400, f"marker [{marker}] not found")
                top = index
            for pos in range(top - 1, -1, -1):
                server = order[pos]
                if all(p(server) for p in preds):
                    page.append(server)
                    if len(page) == limit:
                        break
        minor = req.microversion[1]
        frags = [self.views.detail(s, minor) if detail else self.views.summary(s) for s in page]
        kind = "detail" if detail else "summary"
        frags += [self.views.partial(s, minor, kind) for s in stand_ins]
        parts = [b'{"servers":[', b",".join(frags), b"]"]
        if page and len(page) == limit:
            params = [(k, v) for k, values in req.query.items() if k != "marker" for v in values]
            params.append(("marker", page[-1].id))
            path = "servers/detail" if detail else "servers"
            href = f"{self.core.base_url}/compute/v2.1/{path}?{urlencode(params)}"
            parts.append(b',"servers_links":' + dumps([{"rel": "next", "href": href}]))
        parts.append(b"}")
        return Response(200, b"".join(parts))

    # -- show, update, delete -----------------------------------------------------------------
    def show(self, req: Request) -> Response:
        """GET /servers/{id}; 404 once deleted. A server of a cell that does not answer
        is stood in for from 2.69 and a 500 before, as Nova does."""
        ctx: AuthContext = req.auth
        server = self.state.live_server(
            req.params["server_id"], None if ctx.is_admin else ctx.project_id
        )
        if server is not None and server.id in self.core.down_cell:
            minor = req.microversion[1]
            if minor >= DOWN_CELL_VERSION:
                body = b'{"server":' + self.views.partial(server, minor, "show") + b"}"
                return Response(200, body)
        return self._detail_response(200, self.server_of(req), req)

    def update(self, req: Request) -> Response:
        """PUT /servers/{id}: name, description (2.19+), hostname (2.90+)."""
        server = self.server_of(req)
        body = req.json_object("server")
        minor = req.microversion[1]
        if "name" in body:
            server.name = self._valid_name(body["name"])
        if "description" in body:
            if minor < 19:
                raise ApiError(
                    400, "Additional properties are not allowed ('description' was unexpected)"
                )
            server.description = body["description"]
        if "hostname" in body and minor >= 90:
            server.hostname = str(body["hostname"])
        server.touch()
        return self._detail_response(200, server, req)

    def delete(self, req: Request) -> Response:
        """DELETE /servers/{id} → 204; the server lingers in task_state deleting."""
        self.core.lifecycle.delete(self.server_of(req))
        return empty(204)

    # -- actions ------------------------------------------------------------------------------
    def action(self, req: Request) -> Response:
        """POST /servers/{id}/action: start, stop, suspend, resume, reboot, rebuild, shelve,
        shelveOffload, unshelve, lock, unlock."""
        server = self.server_of(req)
        body = req.json_object()
        if len(body) != 1:
            raise ApiError(400, "Malformed request body: exactly one action is expected.")
        name, arg = next(iter(body.items()))
        life = self.core.lifecycle
        if name == "os-start":
            life.start(server)
        elif name == "os-stop":
            life.stop(server)
        elif name == "suspend":
            life.suspend(server)
        elif name == "resume":
            life.resume(server)
        elif name == "reboot":
            kind = str((arg or {}).get("type", "")) if isinstance(arg, dict) else ""
            life.reboot(server, kind.upper() if kind.lower() in ("soft", "hard") else kind)
        elif name == "rebuild":
            life.rebuild(server, arg)
            # Nova answers a rebuild with the server as it is now (status REBUILD).
            return self._detail_response(202, server, req)
        elif name == "shelve":
            life.shelve(server)
        elif name == "shelveOffload":
            life.shelve_offload(server)
        elif name == "unshelve":
            life.unshelve(server)
        elif name == "lock":
            reason = arg.get("locked_reason") if isinstance(arg, dict) else None
            life.lock(server, reason)
        elif name == "unlock":
            life.unlock(server)
        elif name == "os-getConsoleOutput":
            lines = [
                f"cloudsim console of {server.name} ({server.id})",
                f"status {status_of(server)}",
            ]
            return json_response(200, {"output": "\n".join(lines) + "\n"})
        else:
            raise ApiError(400, f"There is no such action: {name}")
        return empty(202)

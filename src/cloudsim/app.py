"""The HTTP front: one threaded server per listening address, and the request pipeline
(latency, fault injection, auth, microversions, routing, logging)."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import struct
import threading
import time
import uuid
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs

from cloudsim.core import Core, Service
from cloudsim.faults import RESET
from cloudsim.keystone import authenticate, versions_response
from cloudsim.metadata import MetadataService
from cloudsim.web import ApiError, Request, Response, json_response

log = logging.getLogger(__name__)

_SLASHES = re.compile(r"/{2,}")
_FAULT_MESSAGES = {
    401: "The request you have made requires authentication.",
    409: "There was a conflict when trying to complete your request.",
    429: "Too many requests.",
    500: "Unexpected API Error. Please report this at http://bugs.launchpad.net/nova/ and "
    "attach the Nova API log if possible.",
    502: "Bad Gateway",
    503: "The server is currently unavailable. Please try again at a later time.",
    504: "Gateway Timeout",
}


class App(Protocol):
    """What a listening server hands each request to; None means reset the connection."""

    def handle(self, req: Request) -> Response | None:
        """Answer one request."""


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Client disconnects are normal here; log anything else quietly."""
        log.debug("error serving %s", client_address, exc_info=True)

    def close_connections(self) -> None:
        """Shut idle keep-alive connections so their threads end with the server."""
        with self.connections_lock:
            sockets = list(self.connections)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cloudsim"
    sys_version = ""
    timeout = 300
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in one write, but Nagle would still hold small answers.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line; the request log keeps what matters."""

    def _serve(self) -> None:
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        req = Request(
            method=self.command,
            path=_SLASHES.sub("/", path) or "/",
            query=parse_qs(query, keep_blank_values=True),
            headers=headers,
            body=body,
            client_ip=self.client_address[0],
            base_url="",
        )
        resp = self.server.app.handle(req)
        if resp is None:
            self._reset()
            return
        self._send(resp)

    # http.server finds handlers by these names.
    do_GET = _serve  # noqa: N815
    do_POST = _serve  # noqa: N815
    do_PUT = _serve  # noqa: N815
    do_DELETE = _serve  # noqa: N815
    do_PATCH = _serve  # noqa: N815
    do_HEAD = _serve  # noqa: N815

    def _reset(self) -> None:
        # SO_LINGER 0 turns close() into a TCP RST: the client sees "connection reset".
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _send(self, resp: Response) -> None:
        try:
            reason = HTTPStatus(resp.status).phrase
        except ValueError:
            reason = "Unknown"
        body = resp.body
        lines = [
            f"HTTP/1.1 {resp.status} {reason}",
            f"Date: {formatdate(usegmt=True)}",
            "Server: cloudsim",
            f"Content-Length: {len(body)}",
            f"x-openstack-request-id: req-{uuid.uuid4()}",
        ]
        if resp.content_type:
            lines.append(f"Content-Type: {resp.content_type}")
        lines.extend(f"{k}: {v}" for k, v in resp.headers.items())
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head if self.command == "HEAD" else head + body)


class Listener:
    """A started HTTP server on its own thread."""

    def __init__(self, host: str, port: int, app: App, name: str) -> None:
        self.httpd = _HttpServer((host, port), app)
        self.host = host
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, name=name, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        """Stop accepting, end open connections, release the port."""
        self.httpd.shutdown()
        self.httpd.close_connections()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def _apply_fault(
    core: Core, req: Request, service_name: str, render: Any
) -> tuple[bool, Response | None]:
    """Apply latency and an HTTP fault rule; (True, resp) when a fault answered."""
    delay = core.faults.latency_for(req.method, req.path)
    if delay > 0:
        time.sleep(delay)
    rule = core.faults.match_request(req.method, req.path)
    if rule is None:
        return False, None
    if rule.kind == RESET:
        return True, None
    headers = {}
    if rule.retry_after is not None:
        headers["Retry-After"] = (
            str(int(rule.retry_after))
            if float(rule.retry_after).is_integer()
            else str(rule.retry_after)
        )
    message = rule.message or _FAULT_MESSAGES.get(rule.status, f"Injected fault {rule.status}")
    return True, render(ApiError(rule.status, message, headers=headers))


class ApiApp:
    """The OpenStack API endpoint: routes by the first path segment to a service."""

    def __init__(self, core: Core, services: list[Service], control: Service) -> None:
        self.core = core
        self.services = {s.prefix.strip("/"): s for s in services}
        self.control = control
        self.keystone = self.services["identity"]

    def handle(self, req: Request) -> Response | None:
        """Answer one API request."""
        core = self.core
        started = time.time()
        cpu_started = time.thread_time()
        req.base_url = core.base_url
        segment = req.path.split("/", 2)[1] if req.path != "/" else ""
        if segment == "_sim":
            return self._run(self.control, req)
        service = self.services.get(segment)
        renderer = service or self.keystone
        faulted, resp = _apply_fault(core, req, renderer.name, renderer.render_error)
        fault_kind = None
        if faulted:
            fault_kind = "reset" if resp is None else "status"
        else:
            if segment == "":
                resp = versions_response(core.base_url)
            elif service is None:
                resp = renderer.render_error(ApiError(404, "The resource could not be found."))
            else:
                resp = self._run(service, req)
        core.log.record(
            method=req.method,
            path=req.path,
            query="&".join(f"{k}={v}" for k, vs in req.query.items() for v in vs),
            status=resp.status if resp is not None else 0,
            started=started,
            service=renderer.name,
            route=req.route,
            client=req.client_ip,
            fault=fault_kind,
            cpu_started=cpu_started,
        )
        return resp

    def _run(self, service: Service, req: Request) -> Response:
        core = self.core
        try:
            with core.state.lock:
                core.scheduler.run_due()
                if not service.is_public(req):
                    req.auth = authenticate(core, req.header("X-Auth-Token"))
                service.prepare(req)
                resp = service.router.dispatch(req)
        except ApiError as err:
            resp = service.render_error(err)
        except Exception:
            log.exception("cloudsim: %s %s failed", req.method, req.path)
            resp = service.render_error(ApiError(500, _FAULT_MESSAGES[500]))
        service.finish(req, resp)
        return resp


class MetadataApp:
    """The metadata endpoint (a separate listener, as 169.254.169.254 is in a cloud)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.service = MetadataService(core)

    def handle(self, req: Request) -> Response | None:
        """Answer one metadata request."""
        started = time.time()
        cpu_started = time.thread_time()
        faulted, resp = _apply_fault(self.core, req, "metadata", MetadataService.render_error)
        if not faulted:
            try:
                with self.core.state.lock:
                    self.core.scheduler.run_due()
                    resp = (
                        self.service.handle(req)
                        if req.method in ("GET", "HEAD")
                        else MetadataService.render_error(ApiError(405, "Method Not Allowed"))
                    )
            except ApiError as err:
                resp = MetadataService.render_error(err)
            except Exception:
                log.exception("cloudsim metadata: %s failed", req.path)
                resp = json_response(500, {"error": "internal error"})
        self.core.log.record(
            method=req.method,
            path=req.path,
            query="",
            status=resp.status if resp is not None else 0,
            started=started,
            service="metadata",
            route=f"{req.method} metadata",
            client=req.client_ip,
            fault=None if not faulted else ("reset" if resp is None else "status"),
            cpu_started=cpu_started,
        )
        return resp

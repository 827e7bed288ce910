"""The connection to one OpenStack project, with retries, deadlines and raw-JSON paging.

Bulk reads go through the proxies' raw ``get`` and parse JSON ourselves: building
openstacksdk resource objects costs milliseconds per server (REFERENCE.md). Every list
follows the service's next links to the end: clouds cap pages at their own ``max_limit``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import openstack
from keystoneauth1 import exceptions as ks_exceptions
from pydantic import BaseModel, ConfigDict, Field

from deskbroker.centers.openstack import microversion
from deskbroker.centers.openstack.overdue import CLOUD_CALLS, NoHelperLeft, Overdue
from deskbroker.errors import CenterError, unanswered
from deskbroker.outbound import OutboundRefused, Target
from deskbroker.outbound_http import guard_requests

log = logging.getLogger(__name__)
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# A request that creates something is retried only when the cloud says it did nothing.
RETRY_STATUS_UNSAFE = frozenset({429, 503})


class OpenStackParams(BaseModel):
    """How to reach the project. Passwords and application-credential secrets are
    center secrets (``password``, ``application_credential_secret``), never params."""

    model_config = ConfigDict(extra="forbid")
    # A clouds.yaml entry is the broker host's own file (and OS_* variables): its
    # credentials are the operator's, so only a global admin may name one.
    host_side_params: ClassVar[frozenset[str]] = frozenset({"cloud"})
    cloud: str | None = Field(
        default=None,
        description="a clouds.yaml entry of the broker host to use instead (global admins only)",
    )
    auth_url: str | None = None
    region_name: str | None = None
    project_name: str | None = None
    project_id: str | None = None
    project_domain_name: str = "Default"
    user_domain_name: str = "Default"
    username: str | None = None
    application_credential_id: str | None = None
    interface: str = "public"
    verify_tls: bool = True
    timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="the longest one call to the cloud may take, authentication and "
        "retries included",
    )
    retries: int = Field(default=4, ge=0, le=10)
    retry_base_s: float = Field(default=0.5, ge=0, le=30)
    broker_tag: str = Field(default="deskbroker", pattern=r"^[A-Za-z0-9_.:-]{1,40}$")
    default_network: str | None = None
    floating_network: str | None = None
    max_in_flight: int = Field(default=20, ge=1, le=1000)
    reap_leaks: bool = Field(
        default=False, description="terminate instances tagged as ours that no desktop owns"
    )
    build_timeout_s: float = Field(default=900.0, gt=0, le=86400)

    def outbound_targets(self) -> list[Target]:
        """Keystone; the endpoints its catalog names are checked as they are reached."""
        return [Target.url("auth_url", self.auth_url)] if self.auth_url else []


class CloudFailure(CenterError):
    """An OpenStack call failed; ``status`` is the cloud's HTTP status when there was one."""

    def __init__(self, detail: str, cloud_status: int | None = None) -> None:
        super().__init__(detail)
        self.cloud_status = cloud_status


def _message(response: Any) -> str:
    """The message of an OpenStack fault (``{"badRequest": {"message": ..., "code": 400}}``,
    Neutron's ``NeutronError``), one line, short. Any other body (an HTML page, a service
    that is not OpenStack's) is never quoted: it could be anything the URL reached."""
    try:
        body = response.json()
    except ValueError:
        body = None
    said = ""
    if isinstance(body, dict) and len(body) == 1:
        fault = next(iter(body.values()))
        if isinstance(fault, dict) and isinstance(fault.get("message"), str):
            said = fault["message"]
    if said:
        return " ".join(said.split())[:200]
    return f"the cloud answered HTTP {response.status_code}"


class ProjectSession:
    """One authenticated openstacksdk connection plus the broker's retry policy."""

    def __init__(self, params: OpenStackParams, secrets: Mapping[str, str]) -> None:
        self.params = params
        self._secrets = dict(secrets)
        self._conn: openstack.connection.Connection | None = None
        self._compute: microversion.Compute | None = None
        self._lock = threading.Lock()
        self.requests = 0
        # The tenant whose calls left hanging count against its share of helpers.
        self.owner = ""

    def connection(self) -> openstack.connection.Connection:
        if self._conn is None:
            conn = self._connect()
            # Keystone and every endpoint of its catalog, checked as they are reached.
            guard_requests(conn.session.session)
            self._conn = conn
        return self._conn

    def _connect(self) -> openstack.connection.Connection:
        p = self.params
        common: dict[str, Any] = {
            "region_name": p.region_name,
            "interface": p.interface,
            "verify": p.verify_tls,
            # openstacksdk reads ``api_timeout``; a plain ``timeout`` is silently ignored
            # and a silent cloud would hold the caller for ever.
            "api_timeout": p.timeout_s,
            "compute_api_version": "2",
            "app_name": "deskbroker",
        }
        if p.cloud is not None:
            return openstack.connect(cloud=p.cloud, **common)
        if p.auth_url is None:
            raise CloudFailure("the center needs either a clouds.yaml entry or an auth_url")
        if p.application_credential_id:
            secret = self._secrets.get("application_credential_secret")
            if not secret:
                raise CloudFailure("the center's application_credential_secret is not set")
            auth: dict[str, Any] = {
                "auth_url": p.auth_url,
                "application_credential_id": p.application_credential_id,
                "application_credential_secret": secret,
            }
            auth_type = "v3applicationcredential"
        else:
            password = self._secrets.get("password")
            if not p.username or not password:
                raise CloudFailure("the center needs a username and its password secret")
            auth = {
                "auth_url": p.auth_url,
                "username": p.username,
                "password": password,
                "user_domain_name": p.user_domain_name,
                "project_domain_name": p.project_domain_name,
            }
            if p.project_id:
                auth["project_id"] = p.project_id
            else:
                auth["project_name"] = p.project_name
            auth_type = "password"
        return openstack.connection.Connection(auth=auth, auth_type=auth_type, **common)

    def _authenticate(self, deadline: float) -> None:
        """Get a token (when there is none, or it is about to expire) before ``deadline``.

        keystoneauth may make two requests to authenticate (version discovery, then the
        token), each allowed the whole timeout; waiting for it in a helper thread keeps
        the caller's deadline whatever Keystone does. A thread given up on ends by itself
        when its socket times out."""
        conn = self.connection()
        auth = conn.session.auth
        ref = getattr(auth, "auth_ref", None)
        if ref is not None and not ref.will_expire_soon(120):
            return
        what = f"the identity service ({self.params.auth_url or self.params.cloud})"
        self._bounded(conn.session.get_auth_headers, deadline, what, "keystone-auth")

    def _bounded(self, work: Callable[[], Any], deadline: float, what: str, name: str) -> Any:
        """``work`` on a capped helper thread, given up on at ``deadline``: the client
        libraries bound each read, not the call, and a cloud that drips its answer
        would hold the caller for ever."""
        try:
            return CLOUD_CALLS.run(work, deadline - time.monotonic(), name, owner=self.owner)
        except Overdue:
            raise unanswered(
                CloudFailure(f"{what} did not answer within {self.params.timeout_s:g} s")
            ) from None
        except NoHelperLeft as exc:
            raise CloudFailure(
                f"{what}: not asked, since {exc}; the broker waits for them to end first"
            ) from None

    def call(
        self,
        fn: Callable[[], Any],
        what: str,
        *,
        idempotent: bool = True,
        deadline: float | None = None,
    ) -> Any:
        """Run one API call, retrying 429/5xx and connection errors with backoff + jitter,
        authentication included, all within the center's ``timeout_s`` (or by
        ``deadline``, when the call is one step of a longer one).

        A call that is not ``idempotent`` (creating a server) is not retried after a
        connection error or a 500, which may have happened after the cloud acted."""
        if deadline is None:
            deadline = time.monotonic() + self.params.timeout_s
        attempt = 0
        while True:
            attempt += 1
            self.requests += 1
            try:
                self._authenticate(deadline)
                response = self._bounded(fn, deadline, f"{what}: the cloud", "cloud-call")
            except OutboundRefused as exc:
                raise CloudFailure(f"{what}: {exc.detail}") from exc
            except ks_exceptions.Unauthorized as exc:
                self._conn = None
                raise CloudFailure(
                    "the cloud refused the center's credentials (401): check the user, "
                    "password or application credential",
                    401,
                ) from exc
            except ks_exceptions.ConnectTimeout as exc:
                # The whole budget went on waiting: another try would overrun it.
                raise unanswered(
                    CloudFailure(
                        f"{what}: the cloud did not answer within {self.params.timeout_s:g} s"
                    )
                ) from exc
            except (
                ks_exceptions.ConnectFailure,
                ks_exceptions.ConnectionError,
                ks_exceptions.RetriableConnectionFailure,
            ) as exc:
                if not idempotent or not self._may_retry(attempt, deadline, None):
                    raise CloudFailure(f"{what}: the cloud is unreachable: {exc}") from exc
                continue
            except ks_exceptions.HttpError as exc:
                # Raised by keystoneauth while authenticating: Keystone's 503 and 429
                # are retried like any other service's.
                status = int(exc.http_status or 0)
                retry = RETRY_STATUS if idempotent else RETRY_STATUS_UNSAFE
                if status in retry and self._may_retry(attempt, deadline, exc.retry_after):
                    continue
                # Its message can quote Keystone's body: log it, name only the status.
                log.warning("%s: %s", what, exc.message)
                raise CloudFailure(
                    f"{what}: the identity service answered {status}", status
                ) from exc
            except ks_exceptions.ClientException as exc:
                # Its text can quote the remote's answer: name the failure, log the rest.
                log.warning("%s: %s", what, exc)
                code = getattr(exc, "http_status", None)
                said = f"HTTP {code}" if code else type(exc).__name__
                raise CloudFailure(f"{what}: the cloud refused the request ({said})") from exc
            status = response.status_code
            if status < 400:
                return response
            if status == 401 and attempt == 1:
                # An expired token: drop the connection and authenticate again once.
                self._conn = None
                continue
            retry = RETRY_STATUS if idempotent else RETRY_STATUS_UNSAFE
            if status in retry and self._may_retry(
                attempt, deadline, response.headers.get("Retry-After")
            ):
                continue
            raise CloudFailure(f"{what}: {_message(response)} ({status})", status)

    def _may_retry(self, attempt: int, deadline: float, retry_after: object) -> bool:
        """Sleep before the next attempt and say yes, unless the attempts or the time
        are used up."""
        if attempt > self.params.retries:
            return False
        delay = self.params.retry_base_s * (2 ** (attempt - 1))
        if retry_after is not None:
            with contextlib.suppress(TypeError, ValueError):
                delay = max(delay, min(float(str(retry_after)), 30.0))
        delay *= 0.5 + random.random() / 2
        if time.monotonic() + delay >= deadline:
            return False
        time.sleep(delay)
        return True

    # --- compute microversion ---------------------------------------------------------
    @property
    def compute(self) -> microversion.Compute:
        """The microversion agreed on with this cloud, asked for until it is known.

        Asked without holding the lock, which only publishes the answer: the cloud
        (whose catalog a tenant administrator's own Keystone may write) could take the
        whole deadline, and every other caller of this center (engine workers, admin
        requests) would wait behind it, one deadline each. Callers that race each ask
        within their own deadline; the first answer published stays."""
        agreed = self._compute
        if agreed is not None:
            return agreed
        agreed = self._agree(time.monotonic() + self.params.timeout_s)
        with self._lock:
            if self._compute is None:
                self._compute = agreed
            return self._compute

    def _agree(self, deadline: float) -> microversion.Compute:
        """The microversion this broker and the cloud both speak, asked before
        ``deadline``; a failure is not remembered, the next caller asks again."""
        document = self._version_document(deadline)
        agreed = microversion.agree(document)
        if agreed is None:
            raise CloudFailure(
                "the cloud's compute API has no microversion this broker speaks "
                f"(it offers {document.get('version', document)})"
            )
        return agreed

    def _version_document(self, deadline: float) -> Any:
        """The compute endpoint's version document; when the endpoint answers 404 (a
        catalog URL with the project id in it), what keystoneauth's discovery found.

        Both within ``deadline``, discovery on a helper thread like any call:
        keystoneauth bounds each read of its requests, not the discovery, and an
        endpoint that drips its answer would hold the caller for ever."""
        try:
            return self.call(
                lambda: self.connection().compute.get("/", microversion=None),
                "GET the compute version document",
                deadline=deadline,
            ).json()
        except CloudFailure as exc:
            if exc.cloud_status != 404:
                raise
        what = "discovering the compute API"
        try:
            found = self._bounded(
                lambda: self.connection().compute.get_endpoint_data(),
                deadline,
                f"{what}: the cloud",
                "cloud-call",
            )
        except OutboundRefused as exc:
            raise CloudFailure(f"{what}: {exc.detail}") from exc
        except ks_exceptions.ConnectTimeout as exc:
            raise unanswered(CloudFailure(f"{what}: the cloud did not answer in time")) from exc
        except ks_exceptions.ClientException as exc:
            # Its text can quote the remote's answer: name the failure, log the rest.
            log.warning("%s failed: %s", what, exc)
            code = getattr(exc, "http_status", None)
            said = f"HTTP {code}" if code else type(exc).__name__
            raise CloudFailure(f"{what} failed ({said})") from exc
        newest = getattr(found, "max_microversion", None)
        oldest = getattr(found, "min_microversion", None)
        return {
            "version": {
                "version": ".".join(map(str, newest)) if newest else "",
                "min_version": ".".join(map(str, oldest)) if oldest else "",
            }
        }

    # --- raw helpers ---------------------------------------------------------------
    def compute_get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        version = self.compute.header
        return self.call(
            lambda: self.connection().compute.get(
                path, params=dict(params or {}), microversion=version
            ),
            f"GET {path}",
        ).json()

    def compute_post(self, path: str, body: Mapping[str, Any], *, idempotent: bool = True) -> Any:
        version = self.compute.header
        return self.call(
            lambda: self.connection().compute.post(path, json=dict(body), microversion=version),
            f"POST {path}",
            idempotent=idempotent,
        )

    def compute_delete(self, path: str) -> Any:
        version = self.compute.header
        return self.call(
            lambda: self.connection().compute.delete(path, microversion=version),
            f"DELETE {path}",
        )

    def network_get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.call(
            lambda: self.connection().network.get(path, params=dict(params or {})), f"GET {path}"
        ).json()

    def network_send(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        def send() -> Any:
            proxy = self.connection().network
            if method == "DELETE":
                return proxy.delete(path)
            return getattr(proxy, method.lower())(path, json=dict(body or {}))

        return self.call(send, f"{method} {path}")

    # --- paged lists ------------------------------------------------------------------
    def pages(
        self, path: str, key: str, params: Mapping[str, Any], *, service: str = "compute"
    ) -> Iterator[tuple[list[dict[str, Any]], str | None]]:
        """Every page of a list, each with its response's Date header (the cloud's clock).

        ``limit`` is only a wish: a cloud caps pages at its own ``max_limit``, so a
        short page proves nothing. The list goes on while the service gives a next link
        (``<key>_links`` with ``rel: next``; Glance's ``next``), asking our own endpoint
        for the marker that link names: a host written in a response body is never
        sent the token."""
        query = dict(params)
        seen: set[str] = set()
        while True:
            response = self.call(self._getter(service, path, dict(query)), f"GET {path}")
            body = response.json()
            items: list[dict[str, Any]] = list(body.get(key) or [])
            yield items, response.headers.get("Date")
            marker = _next_marker(body, key, items)
            if marker is None:
                return
            if marker in seen:
                raise CloudFailure(f"GET {path}: the cloud's paging went round in a circle")
            seen.add(marker)
            query["marker"] = marker

    def every(
        self, path: str, key: str, params: Mapping[str, Any], *, service: str
    ) -> list[dict[str, Any]]:
        """All items of a paged list."""
        return [item for page, _ in self.pages(path, key, params, service=service) for item in page]

    def _getter(self, service: str, path: str, query: dict[str, Any]) -> Callable[[], Any]:
        conn = self.connection
        if service == "compute":
            version = self.compute.header
            return lambda: conn().compute.get(path, params=query, microversion=version)
        if service == "network":
            return lambda: conn().network.get(path, params=query)
        if service == "image":
            return lambda: conn().image.get(path, params=query)
        if service == "volume":
            return lambda: conn().block_storage.get(path, params=query)
        raise ValueError(f"unknown service {service!r}")


def _next_marker(body: Any, key: str, items: list[dict[str, Any]]) -> str | None:
    """The marker of the next page, or ``None`` when the service gives no next link."""
    href: str | None = None
    for link in body.get(f"{key}_links") or []:
        if isinstance(link, dict) and link.get("rel") == "next":
            href = str(link.get("href") or "")
    if href is None and body.get("next"):
        href = str(body["next"])  # Glance
    if href is None or not items:
        return None
    named = parse_qs(urlparse(href).query).get("marker")
    return named[-1] if named else str(items[-1]["id"])

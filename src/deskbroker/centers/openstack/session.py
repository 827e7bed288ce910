"""The connection to one OpenStack project, with retries and raw-JSON paging.

Bulk reads go through the proxies' raw ``get`` and parse JSON ourselves: building
openstacksdk resource objects costs milliseconds per server (REFERENCE.md).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import openstack
from keystoneauth1 import exceptions as ks_exceptions
from pydantic import BaseModel, ConfigDict, Field

from deskbroker.errors import CenterError
from deskbroker.outbound import OutboundRefused, Target
from deskbroker.outbound_http import guard_requests

COMPUTE_MICROVERSION = "2.79"
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
    timeout_s: float = Field(default=30.0, gt=0, le=600)
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
        self.requests = 0

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
            "timeout": p.timeout_s,
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

    def call(self, fn: Callable[[], Any], what: str, *, idempotent: bool = True) -> Any:
        """Run one API call, retrying 429/5xx and connection errors with backoff + jitter.

        A call that is not ``idempotent`` (creating a server) is not retried after a
        connection error or a 500, which may have happened after the cloud acted."""
        attempt = 0
        while True:
            attempt += 1
            self.requests += 1
            try:
                response = fn()
            except OutboundRefused as exc:
                raise CloudFailure(f"{what}: {exc.detail}") from exc
            except ks_exceptions.Unauthorized as exc:
                self._conn = None
                raise CloudFailure(
                    "the cloud refused the center's credentials (401): check the user, "
                    "password or application credential",
                    401,
                ) from exc
            except (
                ks_exceptions.ConnectFailure,
                ks_exceptions.ConnectionError,
                ks_exceptions.RetriableConnectionFailure,
            ) as exc:
                if attempt > self.params.retries or not idempotent:
                    raise CloudFailure(f"{what}: the cloud is unreachable: {exc}") from exc
                self._sleep(attempt, None)
                continue
            except ks_exceptions.ClientException as exc:
                # Its text can quote the remote's answer: name the failure, log the rest.
                log.warning("%s: %s", what, exc)
                status = getattr(exc, "http_status", None)
                said = f"HTTP {status}" if status else type(exc).__name__
                raise CloudFailure(f"{what}: the cloud refused the request ({said})") from exc
            status = response.status_code
            if status < 400:
                return response
            if status == 401 and attempt == 1:
                # An expired token: drop the connection and authenticate again once.
                self._conn = None
                continue
            retry = RETRY_STATUS if idempotent else RETRY_STATUS_UNSAFE
            if status in retry and attempt <= self.params.retries:
                self._sleep(attempt, response.headers.get("Retry-After"))
                continue
            raise CloudFailure(f"{what}: {_message(response)} ({status})", status)

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = self.params.retry_base_s * (2 ** (attempt - 1))
        if retry_after is not None:
            with contextlib.suppress(ValueError):
                delay = max(delay, min(float(retry_after), 30.0))
        time.sleep(delay * (0.5 + random.random() / 2))

    # --- raw helpers ---------------------------------------------------------------
    def compute_get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.call(
            lambda: self.connection().compute.get(
                path, params=dict(params or {}), microversion=COMPUTE_MICROVERSION
            ),
            f"GET {path}",
        ).json()

    def compute_post(self, path: str, body: Mapping[str, Any], *, idempotent: bool = True) -> Any:
        return self.call(
            lambda: self.connection().compute.post(
                path, json=dict(body), microversion=COMPUTE_MICROVERSION
            ),
            f"POST {path}",
            idempotent=idempotent,
        )

    def compute_delete(self, path: str) -> Any:
        return self.call(
            lambda: self.connection().compute.delete(path, microversion=COMPUTE_MICROVERSION),
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

    def image_get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.call(
            lambda: self.connection().image.get(path, params=dict(params or {})), f"GET {path}"
        ).json()

    def pages(
        self, path: str, key: str, params: Mapping[str, Any]
    ) -> Iterator[tuple[list[dict[str, Any]], str | None]]:
        """Nova-style paging (``limit`` and ``marker`` until a short page); each page
        comes with its response's Date header: the cloud's clock."""
        query = dict(params)
        limit = int(query.setdefault("limit", 1000))
        while True:
            response = self.call(
                lambda: self.connection().compute.get(
                    path, params=dict(query), microversion=COMPUTE_MICROVERSION
                ),
                f"GET {path}",
            )
            body = response.json()
            items: list[dict[str, Any]] = body.get(key, [])
            yield items, response.headers.get("Date")
            if len(items) < limit or not body.get(f"{key}_links"):
                return
            query["marker"] = items[-1]["id"]

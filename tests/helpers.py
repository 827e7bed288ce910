"""Test helpers that drive the broker through its real HTTP API."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

import httpx
from fastapi.testclient import TestClient

from deskbroker.bootstrap import add_local_user
from deskbroker.services.context import BrokerContext
from deskbroker.store.db import statement_counter
from deskbroker.store.tables import Center, Desktop

T = TypeVar("T")

ADMIN_PASSWORD = "admin-password-1"
USER_PASSWORD = "user-password-1"


def wait_until(
    check: Callable[[], T],
    what: str | Callable[[], str] = "the condition",
    *,
    timeout_s: float = 20.0,
    interval_s: float = 0.05,
) -> T:
    """Calls ``check`` until it answers something true, and returns that answer; fails
    the test after ``timeout_s``, saying it waited for ``what`` (a callable is asked at
    that moment, so the message can show the state that did not come). The one wait of
    the tests: every poll loop goes through it."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = check()
        if answer:
            return answer
        if time.monotonic() >= deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"waited {timeout_s:g} s for {said}")
        time.sleep(interval_s)


# The loopback networks of this process's simulated clouds, and the lock file that holds them.
_CLOUD_NETWORKS: tuple[dict[str, str], IO[str]] | None = None
_CLOUD_NETWORK_SLOTS = 48


def cloud_networks() -> dict[str, str]:
    """``fixed_cidr`` and ``floating_cidr`` for a CloudSim whose instances listen on their
    addresses (``backing="xvnc"``: port 5900 on each instance's address), private to this
    test process: parallel workers, both database legs and other runs on the machine would
    otherwise all put their first desktop on 127.100.0.2:5900. A lock file per slot, held
    until the process ends, keeps two processes off one slot."""
    global _CLOUD_NETWORKS
    if _CLOUD_NETWORKS is None:
        for slot in range(_CLOUD_NETWORK_SLOTS):
            handle = open(f"/tmp/deskbroker-test-cloud-net-{slot}.lock", "w")  # noqa: SIM115
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            # Beside cloudsim's defaults (127.100.0.0/14, 127.200.0.0/16), not on them.
            networks = {
                "fixed_cidr": f"127.{104 + slot}.0.0/16",
                "floating_cidr": f"127.{201 + slot}.0.0/16",
            }
            _CLOUD_NETWORKS = (networks, handle)
            break
        else:
            raise RuntimeError(
                f"all {_CLOUD_NETWORK_SLOTS} simulated-cloud network slots are held by other "
                "test processes (/tmp/deskbroker-test-cloud-net-*.lock)"
            )
    return dict(_CLOUD_NETWORKS[0])


@dataclass
class Api:
    """An admin session against a TestClient, with seeding shortcuts."""

    client: TestClient
    ctx: BrokerContext
    token: str
    ids: dict[str, str] = field(default_factory=dict)

    @classmethod
    def with_admin(cls, client: TestClient, ctx: BrokerContext) -> Api:
        add_local_user(ctx, "admin", ADMIN_PASSWORD, role="global_admin")
        response = client.post(
            "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
        )
        assert response.status_code == 200, response.text
        return cls(client, ctx, response.json()["token"])

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def post(self, path: str, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
        response = self.client.post(f"/api/v1/admin/{path}", json=body, headers=self.headers)
        assert response.status_code == status, response.text
        result: dict[str, Any] = response.json()
        return result

    def get(self, path: str, status: int = 200) -> Any:
        response = self.client.get(f"/api/v1/admin/{path}", headers=self.headers)
        assert response.status_code == status, response.text
        return response.json()

    def patch(self, path: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
        response = self.client.patch(f"/api/v1/admin/{path}", json=body, headers=self.headers)
        assert response.status_code == status, response.text
        result: dict[str, Any] = response.json()
        return result

    def delete(self, path: str, status: int = 204) -> Any:
        response = self.client.delete(f"/api/v1/admin/{path}", headers=self.headers)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def source_id(self) -> str:
        sources = self.get("identity-sources?kind=local")["items"]
        return str(sources[0]["id"])

    def seed_pool(
        self,
        machines: int,
        *,
        name: str = "lab",
        ports: dict[str, int] | None = None,
        address_base: str = "127.0.1.",
        users: int = 0,
        assignment: str = "persistent",
    ) -> dict[str, str]:
        """A static center of ``machines``, a pool over it, a policy, a catch-all rule."""
        center = self.post(
            "centers",
            {
                "name": f"{name}-center",
                "kind": "static",
                "params": {
                    "machines": [
                        {
                            "name": f"{name}-{i:03d}",
                            "address": f"{address_base}{i + 1}",
                            **({"ports": ports} if ports else {}),
                        }
                        for i in range(machines)
                    ]
                },
            },
        )
        pool = self.post("pools", {"name": name, "center_ids": [center["id"]]})
        policy = self.post(
            "policies",
            {
                "name": f"{name}-policy",
                "entries": [{"pool_id": pool["id"], "assignment": assignment}],
            },
        )
        self.post(
            "assignment-rules",
            {"identity_source_id": self.source_id(), "name": "everyone", "policy_id": policy["id"]},
        )
        for i in range(users):
            add_local_user(self.ctx, f"user{i}", USER_PASSWORD)
        self.ids.update(center=center["id"], pool=pool["id"], policy=policy["id"])
        return self.ids

    def login(
        self, username: str, password: str = USER_PASSWORD, status: int = 200
    ) -> dict[str, Any]:
        response = self.client.post(
            "/api/v1/auth/login", json={"username": username, "password": password}
        )
        assert response.status_code == status, response.text
        result: dict[str, Any] = response.json()
        return result


def run_queued_scan(api: Api, center_id: str) -> dict[str, Any]:
    """Run a center's queued scan as the engine's scan job runs it (a cloud center is
    scanned by the engine after a save, never in it); returns the center afterwards."""
    from deskbroker.engine.drivers import DriverCache
    from deskbroker.engine.maintenance import scan_center
    from deskbroker.store.tables import utcnow

    scan_center(api.ctx, DriverCache(api.ctx), center_id, utcnow())
    center: dict[str, Any] = api.get(f"centers/{center_id}")
    return center


def scan_now(api: Api, center_id: str) -> dict[str, Any]:
    """An admin's "scan now" (answered 202 at once), then the queued scan run."""
    queued = api.post(f"centers/{center_id}/scan", {}, status=202)
    assert queued["center_id"] == center_id and queued["job_id"]
    return run_queued_scan(api, center_id)


@contextmanager
def counting() -> Iterator[list[str]]:
    """The SQL statements run inside the block, as text."""
    sink: list[str] = []
    token = statement_counter.set(sink)
    try:
        yield sink
    finally:
        statement_counter.reset(token)


def post_login(api: Api, username: str, password: str, **extra: Any) -> httpx.Response:
    """The raw answer of a password login (any status)."""
    return api.client.post(
        "/api/v1/auth/login", json={"username": username, "password": password, **extra}
    )


def built_desktops(api: Api, center_id: str, count: int, *, prefix: str = "built") -> list[str]:
    """Desktops the broker built on the center (deletable: ``<prefix>-000``... on
    instances ``<prefix>-server-0``...), recorded as a scan would; their ids."""
    with api.ctx.db.write() as session:
        center = session.get(Center, center_id)
        assert center is not None
        rows = [
            Desktop(
                tenant_id=center.tenant_id,
                center_id=center_id,
                external_id=f"{prefix}-server-{i}",
                name=f"{prefix}-{i:03d}",
                power_state="running",
                availability="available",
                deletable=True,
            )
            for i in range(count)
        ]
        session.add_all(rows)
        session.flush()
        return [r.id for r in rows]


def bearer(token: str) -> dict[str, str]:
    """The header that carries ``token``."""
    return {"Authorization": f"Bearer {token}"}


def tenant_admin_of(api: Api, tenant: str, username: str) -> Api:
    """A tenant administrator of ``tenant`` (made if need be), signed in."""
    add_local_user(api.ctx, username, ADMIN_PASSWORD, role="tenant_admin", tenant_name=tenant)
    api.ctx.cache.invalidate()
    signed = api.client.post(
        "/api/v1/auth/login",
        json={"username": username, "password": ADMIN_PASSWORD, "tenant": tenant},
    )
    assert signed.status_code == 200, signed.text
    return Api(api.client, api.ctx, signed.json()["token"])

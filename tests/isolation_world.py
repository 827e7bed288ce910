"""Two tenants with one of everything each, built through the real API for the isolation sweep.

Each tenant gets a static center whose machines are a real Xvnc server, an OpenStack
center on its own cloudsim project, pools (plain, spare, nested, provisioning), plans, two
policies with entries, an extra identity source, rules, users of every role, an
assignment taken at login, a queued user, a session and a plan timer reported by the
desktop's agent, and a desktop that the engine built (jobs, provisioning tasks, images).
Every name of tenant T starts with T's name, so a leak shows up as text.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from cloudsim.server import CloudSim
from deskbroker import xvnc
from deskbroker.bootstrap import add_local_user
from deskbroker.engine.nodes import NodeHeartbeat
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.store import fanout
from deskbroker.store.tables import Job, Tenant, utcnow
from tests.helpers import ADMIN_PASSWORD, USER_PASSWORD, Api, scan_now, wait_until
from tests.tools import XVNC, require

# A tenant's people, by role; "waiting" is a plain user queued for a desktop.
ROLES = ("tenant_admin", "helpdesk", "auditor", "user", "waiting")


@dataclass
class TenantWorld:
    """One tenant's objects: ``ids`` by resource path segment, ``tokens`` by role."""

    name: str
    tenant_id: str
    admin: Api
    ids: dict[str, list[str]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    # Named objects the sweep needs by role in the world, not just by kind.
    held_desktop: str = ""  # assigned to the tenant's user at login, in session
    free_desktop: str = ""  # in no policy's pool, assigned to nobody
    cloud_desktop: str = ""  # built by the engine on the tenant's cloudsim project
    user: str = ""  # the plain user holding ``held_desktop``
    queued_user: str = ""
    pool: str = ""  # the pool ``held_desktop`` was claimed from
    spare_pool: str = ""  # holds ``free_desktop``
    source: str = ""  # the local identity source
    agent_token: str = ""  # minted for ``held_desktop``

    def add(self, resource: str, object_id: str) -> str:
        self.ids.setdefault(resource, []).append(object_id)
        return object_id

    def first(self, resource: str) -> str:
        return self.ids[resource][0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def real_desktops(count: int) -> Iterator[list[int]]:
    """``count`` real Xvnc servers on 127.0.0.1; yields their ports."""
    require(XVNC)
    started: list[xvnc.XvncDesktop] = []
    try:
        for _ in range(count):
            started.append(xvnc.start("127.0.0.1", port=free_port()))
        yield [d.port for d in started]
    finally:
        for desktop in started:
            desktop.stop()


def _tenant_admin(api: Api, name: str) -> Api:
    api.post("tenants", {"name": name, "display_name": f"{name} corp"})
    add_local_user(api.ctx, f"{name}-boss", ADMIN_PASSWORD, role="tenant_admin", tenant_name=name)
    # Made behind the API's back, as the CLI does: tell the login path's cache.
    api.ctx.cache.invalidate()
    return Api(api.client, api.ctx, login(api.client, f"{name}-boss", ADMIN_PASSWORD, name))


def login(client: TestClient, username: str, password: str, tenant: str) -> str:
    response = client.post(
        "/api/v1/auth/login", json={"username": username, "password": password, "tenant": tenant}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def _objects(w: TenantWorld, sim: CloudSim, vnc_port: int) -> None:
    """Centers, pools, plans, policies, sources, rules and users of one tenant."""
    a, n = w.admin, w.name
    static = a.post(
        "centers",
        {
            "name": f"{n}-desks",
            "kind": "static",
            "params": {
                "machines": [
                    {"name": f"{n}-{i:03d}", "address": "127.0.0.1", "ports": {"vnc": vnc_port}}
                    for i in range(2)
                ]
            },
        },
    )
    cloud = a.post(
        "centers",
        {
            "name": f"{n}-cloud",
            "kind": "openstack",
            "params": {
                "auth_url": sim.auth_url,
                "project_name": n,
                "username": n,
                "default_network": "private",
                "retry_base_s": 0.01,
            },
            "secrets": {"password": "password"},
            "scan_interval_s": 3600,
        },
    )
    w.add("centers", static["id"])
    w.add("centers", cloud["id"])
    by_name = {d["name"]: d["id"] for d in a.get(f"desktops?center_id={static['id']}")["items"]}
    held, w.free_desktop = by_name[f"{n}-000"], by_name[f"{n}-001"]
    assert a.post(f"desktops/{held}/probe", {}, status=200)["reachable"] is True
    desks = a.post("pools", {"name": f"{n}-pool", "desktop_ids": [held]})
    spare = a.post(
        "pools",
        {
            "name": f"{n}-spare",
            "center_ids": [static["id"]],
            "filters": [{"attribute": "name", "op": "ends_with", "value": "-001"}],
        },
    )
    sub = a.post("pools", {"name": f"{n}-nested", "parent_pool_id": desks["id"]})
    auto = a.post(
        "pools",
        {
            "name": f"{n}-auto",
            "center_ids": [cloud["id"]],
            "provisioning": {
                "enabled": True,
                "min_unassigned": 1,
                "max_total": 1,
                "parameters": {
                    "name_template": f"{n}-vm-{{SEQUENCE:2}}",
                    "image": "cirros-0.6.2-x86_64-disk",
                    "flavor": "m1.tiny",
                },
            },
        },
    )
    # Chooses by address alone, which B's desktops share: it must still hold only A's.
    lure = a.post(
        "pools",
        {
            "name": f"{n}-lure",
            "filters": [{"attribute": "address", "op": "equals", "value": "127.0.0.1"}],
        },
    )
    w.pool, w.spare_pool = desks["id"], spare["id"]
    for pool in (desks, spare, sub, auto, lure):
        w.add("pools", pool["id"])
    plans = {
        "protocol-plans": {"protocols": [{"protocol": "vnc"}]},
        "power-plans": {
            "rules": [{"event": "disconnect", "after_minutes": 30, "action": "suspend"}]
        },
        "release-plans": {"rules": [{"event": "logout", "after_minutes": 60, "action": "keep"}]},
    }
    plan_ids = {
        kind: w.add(kind, a.post(kind, {"name": f"{n}-{kind}", **body})["id"])
        for kind, body in plans.items()
    }
    policy = a.post(
        "policies",
        {
            "name": f"{n}-policy",
            "entries": [
                {
                    "pool_id": desks["id"],
                    "protocol_plan_id": plan_ids["protocol-plans"],
                    "power_plan_id": plan_ids["power-plans"],
                    "release_plan_id": plan_ids["release-plans"],
                }
            ],
        },
    )
    cloud_policy = a.post(
        "policies",
        {
            "name": f"{n}-cloud-policy",
            "entries": [{"pool_id": auto["id"], "backup_pool_id": spare["id"]}],
        },
    )
    w.add("policies", policy["id"])
    w.add("policies", cloud_policy["id"])
    w.source = w.add("identity-sources", a.get("identity-sources?kind=local")["items"][0]["id"])
    w.add(
        "identity-sources",
        a.post("identity-sources", {"name": f"{n}-extra", "kind": "local"})["id"],
    )
    for rule in (
        {
            "name": f"{n}-desk-users",
            "conditions": {"group": f"{n}-desk"},
            "policy_id": policy["id"],
        },
        {
            "name": f"{n}-cloud-users",
            "conditions": {"group": f"{n}-cloud"},
            "policy_id": cloud_policy["id"],
        },
    ):
        w.add(
            "assignment-rules",
            a.post("assignment-rules", {"identity_source_id": w.source, **rule})["id"],
        )
    for username, role, groups in (
        (f"{n}-user", "user", [f"{n}-desk"]),
        (f"{n}-waiting", "user", [f"{n}-desk"]),
        (f"{n}-helpdesk", "helpdesk", []),
        (f"{n}-auditor", "auditor", []),
    ):
        user = a.post(
            "users",
            {
                "identity_source_id": w.source,
                "username": username,
                "password": USER_PASSWORD,
                "role": role,
                "groups": groups,
                "display_name": f"{username} person",
            },
        )
        w.add("users", user["id"])
    w.user, w.queued_user = w.ids["users"][0], w.ids["users"][1]
    w.held_desktop = held
    role = {"name": f"{n}-operator", "permissions": ["pools:*", "desktops:read"]}
    w.add("roles", a.post("roles", role)["id"])
    token = {"name": f"{n}-bot", "scopes": ["pools:read"], "expires_in_days": 1}
    w.add("api-tokens", a.post("api-tokens", token)["id"])
    # A failed sign-in: the account's lockout counter (addresses span tenants).
    response = a.client.post(
        "/api/v1/auth/login",
        json={"username": f"{n}-auditor", "password": "wrong-password", "tenant": n},
    )
    assert response.status_code == 401, response.text
    w.ids["lockout-addresses"] = ["testclient"]
    w.ids["identity-source-names"] = [f"{n}-extra"]
    # An enrolment key, and an agent enrolment it holds for approval (its address
    # matches no desktop).
    key = a.post("enrolment-keys", {"name": f"{n}-image"})
    w.add("enrolment-keys", key["id"])
    held_enrolment = a.client.post(
        "/api/v1/agent/enrol",
        json={"secret": key["key"], "identity": {"addresses": ["192.0.2.250"]}},
    )
    assert held_enrolment.status_code == 202, held_enrolment.text
    w.add("pending-enrolments", held_enrolment.json()["pending_id"])
    # The approval's body is aimed at B's desktops through A's own held enrolment.
    w.add("seeded-pending-enrolments", held_enrolment.json()["pending_id"])
    # A webhook (to a closed port: its deliveries stay pending), and a test event for it.
    hook = a.post(
        "webhooks",
        {
            "name": f"{n}-hook",
            "url": "http://127.0.0.1:9/hook",
            "kinds": ["login", "session"],
            "secret": f"{n}-webhook-secret-0123456789",
        },
    )
    w.add("webhooks", hook["id"])
    a.post(f"webhooks/{hook['id']}/test", {}, status=202)


def _activity(w: TenantWorld) -> None:
    """Logins (an assignment and a queue entry), an agent's session and a plan timer."""
    a, n = w.admin, w.name
    w.tokens["tenant_admin"] = a.token
    for role, username in (
        ("user", f"{n}-user"),
        ("helpdesk", f"{n}-helpdesk"),
        ("auditor", f"{n}-auditor"),
    ):
        w.tokens[role] = login(a.client, username, USER_PASSWORD, n)
    held = a.get(f"assignments?user_id={w.user}")["items"]
    assert [h["desktop_id"] for h in held] == [w.held_desktop]
    w.tokens["waiting"] = login(a.client, f"{n}-waiting", USER_PASSWORD, n)
    assert a.get(f"pools/{w.pool}/queue")["items"][0]["user_id"] == w.queued_user
    w.agent_token = a.post(f"desktops/{w.held_desktop}/agent-token", {})["token"]
    for event in ("login", "disconnect"):
        response = a.client.post(
            "/api/v1/agent/events",
            json={"event": event, "user": f"{n}-user", "session_key": f"{n}-s1"},
            headers={"Authorization": f"Bearer {w.agent_token}"},
        )
        assert response.status_code == 200, response.text
    assert a.get("timers")["total"] == 1
    # The user's own desktop connects: the sweep's 404s are about tenancy, not routing.
    response = a.client.post(
        f"/api/v1/client/desktops/{w.held_desktop}/connect",
        json={"protocol": "vnc"},
        headers={"Authorization": f"Bearer {w.tokens['user']}"},
    )
    assert response.status_code == 200, response.text


def _stopped(w: TenantWorld, sim: CloudSim) -> None:
    """The built desktop goes to the queued user and is shut off in the cloud: connecting
    to it would power it on, so it is the desktop that shows whether B's can be powered."""
    a = w.admin
    a.post("assignments", {"desktop_id": w.cloud_desktop, "user_id": w.queued_user})
    sim.set_server_state(a.get(f"desktops/{w.cloud_desktop}")["external_id"], "SHUTOFF")
    scan_now(a, w.ids["centers"][1])
    assert a.get(f"desktops/{w.cloud_desktop}")["power_state"] == "stopped"


def _built(worlds: list[TenantWorld], ctx: BrokerContext) -> None:
    """The engine builds each provisioning pool's desktop on its tenant's project."""
    engine = Engine(ctx, workers=4)
    engine.recover()
    built: list[dict[str, int]] = []

    def each_built() -> bool:
        engine.run_once()
        built[:] = [w.admin.get(f"pools/{w.ids['pools'][3]}/status")["counts"] for w in worlds]
        return all(c["available"] == 1 and c["provisioning"] == 0 for c in built)

    try:
        # Room for a loaded machine (CI shares one): the deadline only matters when the
        # builds never finish.
        wait_until(
            each_built, lambda: f"the engine to build each pool's desktop: {built}", timeout_s=90
        )
    finally:
        engine.stop()
    for w in worlds:
        members = w.admin.get(f"pools/{w.ids['pools'][3]}/members")["items"]
        w.cloud_desktop = members[0]["id"]
        tasks = w.admin.get("provisioning-tasks")["items"]
        assert tasks and all(t["state"] == "ready" for t in tasks), tasks
        w.ids["provisioning-tasks"] = [t["id"] for t in tasks]
        w.ids["images"] = [i["id"] for i in w.admin.get("images")["items"]]
        assert w.ids["images"], "the cloud center's scan found no images"


def _forgotten(w: TenantWorld, sim: CloudSim) -> None:
    """A machine of the tenant's cloud the broker did not build, deleted by its admin:
    forgotten (its scans leave it out), for the sweep to aim at."""
    a, cloud = w.admin, w.ids["centers"][1]
    [external] = sim.seed_servers(1, project=w.name, name_prefix=f"{w.name}-legacy")
    scan_now(a, cloud)
    found = a.get(f"desktops?center_id={cloud}")["items"]
    legacy = next(d["id"] for d in found if d["external_id"] == external)
    a.delete(f"desktops/{legacy}")
    w.ids["forgotten-desktops"] = [f["id"] for f in a.get("forgotten-desktops")["items"]]
    assert len(w.ids["forgotten-desktops"]) == 1


def build(
    api: Api, sim: CloudSim, vnc_ports: list[int], names: tuple[str, ...]
) -> list[TenantWorld]:
    """One world per tenant name, all through the API but the tenants' first admins."""
    worlds = []
    for name, port in zip(names, vnc_ports, strict=True):
        admin = _tenant_admin(api, name)
        with api.ctx.db.read() as session:
            tenant_id = session.scalars(select(Tenant.id).where(Tenant.name == name)).one()
        world = TenantWorld(name, tenant_id, admin)
        _objects(world, sim, port)
        worlds.append(world)
    _built(worlds, api.ctx)
    for world in worlds:
        _activity(world)
        _stopped(world, sim)
        a = world.admin
        world.ids["desktops"] = [d["id"] for d in a.get("desktops")["items"]]
        world.ids["assignments"] = [d["desktop_id"] for d in a.get("assignments")["items"]]
        world.ids["tenants"] = [world.tenant_id]
        world.ids["sessions"] = [x["id"] for x in a.get("sessions")["items"]]
        _forgotten(world, sim)
        owned = set(world.ids["pools"]) | set(world.ids["centers"])
        with api.ctx.db.read() as session:
            jobs = session.scalars(select(Job.id).where(Job.target_id.in_(owned))).all()
        assert jobs, "no job works for the tenant's pools or centers"
        world.ids["jobs"] = list(jobs)
        # Nodes are the cluster's, not a tenant's: one per world so the sweep has a real
        # one to aim at (a tenant admin is refused them all alike).
        node = NodeHeartbeat(api.ctx, f"{world.name}-node:{uuid.uuid4().hex[:8]}")
        node.beat_once()
        world.ids["nodes"] = [node.node_id]
    # Every event so far fanned out into deliveries (as the engine's webhooks job does),
    # so the event stream and the deliveries listing have each tenant's to show.
    with api.ctx.db.write() as session:
        while not fanout.fan_out(session, utcnow(), settle_s=0).caught_up:
            pass
    return worlds


def everything(world: TenantWorld) -> dict[str, Any]:
    """Every id of the tenant's objects, flat, for searching responses."""
    return {i: kind for kind, ids in world.ids.items() for i in ids}

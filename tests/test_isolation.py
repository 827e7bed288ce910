"""The tenant-isolation sweep: every operation of the OpenAPI document, as each of tenant
A's people, aimed at tenant B.

Two tenants are built with one of everything (tests/isolation_world.py). Then, for every
operation the document lists, as A's tenant admin, helpdesk, auditor, plain user and
desktop agent:

- a listing shows nothing of B's (no id, no name), with and without each of its query
  parameters set to B's values;
- an operation on a B object's id answers exactly as it does for an id that never
  existed: 404 to whoever may use the operation at all, the same refusal otherwise;
- a body that points at a B object (a pool at B's center, a policy entry at B's pool,
  an assignment of B's desktop, a rule to B's policy, ``tenant_id`` = B, an agent event
  about B's desktop) is refused, again exactly as a made-up id would be;
- and after the whole sweep not one row of the database has changed and the cloud was
  asked to do nothing.

An operation the sweep does not know how to aim at B fails the test: a new endpoint
must be taught here before it ships.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from cloudsim.server import CloudSim
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import (
    Base,
    Job,
    PolicyEntry,
    PoolMember,
    PoolStat,
    Tenant,
)
from tests.helpers import USER_PASSWORD, Api
from tests.isolation_world import ROLES, TenantWorld, build, real_desktops
from tests.openapi_cases import Operation, Schemas, operations

NAMES = ("alpha", "zebra")  # tenant A sweeps, tenant B is swept
PUBLIC_TEXT = ("/healthz", "/readyz", "/metrics")
LOGIN = "/api/v1/auth/login"
AGENT = "agent"  # A's held desktop's agent token, a fifth identity
IDENTITIES = (*ROLES, AGENT)
# The global admin may act in any tenant, but may not tie one tenant's objects to another's.
GLOBAL = "global_admin"

# Which kind of object a body field names; a new id field must be added here.
FIELD_KINDS = {
    "center_id": "centers",
    "center_ids": "centers",
    "pool_id": "pools",
    "backup_pool_id": "pools",
    "parent_pool_id": "pools",
    "desktop_id": "desktops",
    "desktop_ids": "desktops",
    "user_id": "users",
    "policy_id": "policies",
    "identity_source_id": "identity-sources",
    "protocol_plan_id": "protocol-plans",
    "power_plan_id": "power-plans",
    "release_plan_id": "release-plans",
    "tenant_id": "tenants",
}
# Which kind of object a path parameter names, when the segment before it is no resource.
PARAM_KINDS = {
    "center_id": "centers",
    "desktop_id": "desktops",
    "pool_id": "pools",
    "session_id": "sessions",
    "token_id": "api-tokens",
    "address": "lockout-addresses",
    "source": "identity-source-names",
}
# Sign-in steps that carry a one-time state, device code, sign-in code or second-factor
# challenge, never an object of a tenant.
SIGN_IN_STEPS = (
    "/api/v1/auth/oidc/callback",
    "/api/v1/auth/oidc/device/poll",
    "/api/v1/auth/oidc/exchange",
    "/api/v1/auth/login/totp",
    "/api/v1/auth/login/totp/enrol",
)
# The caller's own account (their TOTP app): no object of any tenant can be named.
SELF_SERVICE = ("/api/v1/me/totp", "/api/v1/me/totp/confirm")
# Ends the caller's own session tokens: it names nothing, and the sweep's identities keep
# theirs, so only callers without a person's token are sent (test_token_revocation.py
# covers a real logout).
LOGOUT = "/api/v1/auth/logout"
# An agent's enrolment and token refresh: no token, a secret that names its desktop.
AGENT_CREDENTIAL_STEPS = ("/api/v1/agent/enrol", "/api/v1/agent/token", "/api/v1/agent/enrol/poll")
# Signed by the gateway's own key, never by a token: every identity is refused.
GATEWAY_REPORTS = "/api/v1/gateway/reports"
EXPLAIN = "/api/v1/admin/explain"
# What a tenant's login page shows anyone, by design (the domain selector): its sources'
# names, domains and kinds, and nothing else of it: no id, no setting.
SIGN_IN_CHOICES = "/api/v1/auth/sources"
# The event stream (text/event-stream, not a JSON listing) and the usage report (one row
# per tenant, CSV too): their own checks below.
EVENT_STREAM = "/api/v1/admin/event-stream"
USAGE = "/api/v1/admin/usage"


@pytest.fixture(scope="module")
def sim() -> Iterator[CloudSim]:
    simulator = CloudSim(projects=list(NAMES), clock_speed=40.0).start()
    yield simulator
    simulator.stop()


@pytest.fixture(scope="module")
def vnc_ports() -> Iterator[list[int]]:
    with real_desktops(len(NAMES)) as ports:
        yield ports


@dataclass
class Sweep:
    """The two worlds, a client that reports a 500 instead of raising it, and findings."""

    api: Api
    a: TenantWorld
    b: TenantWorld
    doc: dict[str, Any]
    loop: asyncio.AbstractEventLoop
    http: httpx.AsyncClient
    a_secrets: set[str]
    b_secrets: set[str]
    failures: list[str] = field(default_factory=list)
    sent: int = 0

    @property
    def schemas(self) -> Schemas:
        return Schemas(self.doc)

    def token(self, identity: str) -> str:
        if identity == GLOBAL:
            return self.api.token
        return self.a.agent_token if identity == AGENT else self.a.tokens[identity]

    def send(
        self,
        identity: str | None,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        last_event_id: str | None = None,
    ) -> httpx.Response:
        headers = {} if identity is None else {"Authorization": f"Bearer {self.token(identity)}"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        request = self.http.request(
            method,
            path,
            params=query,
            content=None if body is None else json.dumps(body).encode(),
            headers={**headers, "Content-Type": "application/json"}
            if body is not None
            else headers,
        )
        self.sent += 1
        return self.loop.run_until_complete(request)

    def fail(self, text: str) -> None:
        self.failures.append(text)

    def leaks(self, text: str) -> list[str]:
        return sorted(s for s in self.b_secrets if s in text.lower())


def _secrets(ctx: BrokerContext, world: TenantWorld) -> set[str]:
    """Every id of a row the tenant owns, and its name (which starts all its names)."""
    found = {world.name}
    owned: set[str] = set()
    with ctx.db.read() as session:
        for table in Base.metadata.sorted_tables:
            if "tenant_id" in table.c and "id" in table.c and table.name != "events":
                rows = session.execute(
                    select(table.c.id).where(table.c.tenant_id == world.tenant_id)
                )
                owned |= {str(r[0]) for r in rows}
        owned |= set(session.scalars(select(Job.id).where(Job.target_id.in_(owned))).all())
    # Integer keys (queue tickets) would match any number; the string ids are uuids.
    return found | {o.lower() for o in owned if len(o) >= 16} | {world.tenant_id}


@pytest.fixture
def sweep(api: Api, sim: CloudSim, vnc_ports: list[int]) -> Iterator[Sweep]:
    a, b = build(api, sim, vnc_ports, NAMES)
    doc = api.client.get("/api/v1/openapi.json").json()
    loop = asyncio.new_event_loop()
    transport = httpx.ASGITransport(app=api.client.app, raise_app_exceptions=False)
    http = httpx.AsyncClient(transport=transport, base_url="http://testserver")
    yield Sweep(api, a, b, doc, loop, http, _secrets(api.ctx, a), _secrets(api.ctx, b))
    loop.run_until_complete(http.aclose())
    loop.close()


def snapshot(ctx: BrokerContext) -> dict[str, list[str]]:
    """Every row of every table, the event log included, in a comparable form."""
    out: dict[str, list[str]] = {}
    with ctx.db.read() as session:
        for table in Base.metadata.sorted_tables:
            # An agent's liveness stamp moves with every call of A's own agent: not a change.
            columns = [
                c
                for c in table.c
                if not (table.name == "desktops" and c.name in ("agent_seen_at", "updated_at"))
            ]
            out[table.name] = sorted(repr(tuple(r)) for r in session.execute(select(*columns)))
    return out


def b_rows(ctx: BrokerContext, b: TenantWorld) -> int:
    """How many rows tenant B has, through every path a row can belong to it."""
    with ctx.db.read() as session:
        n = 0
        for table in Base.metadata.sorted_tables:
            if "tenant_id" in table.c:
                n += len(
                    session.execute(
                        select(table.c.tenant_id).where(table.c.tenant_id == b.tenant_id)
                    ).all()
                )
        pools = b.ids["pools"]
        n += len(
            session.scalars(select(PoolMember.pool_id).where(PoolMember.pool_id.in_(pools))).all()
        )
        n += len(session.scalars(select(PoolStat.pool_id).where(PoolStat.pool_id.in_(pools))).all())
        n += len(
            session.scalars(
                select(PolicyEntry.policy_id).where(PolicyEntry.policy_id.in_(b.ids["policies"]))
            ).all()
        )
        n += len(session.scalars(select(Tenant.id).where(Tenant.id == b.tenant_id)).all())
    return n


# --- what the sweep sends -------------------------------------------------------------
def create_seeds(a: TenantWorld) -> dict[str, dict[str, Any]]:
    """A body each create accepts from A's admin, naming A's objects wherever it can."""
    return {
        "/api/v1/admin/tenants": {"name": "alpha-extra"},
        "/api/v1/admin/centers": {"name": "alpha-seed", "kind": "static", "params": {}},
        "/api/v1/admin/pools": {
            "name": "alpha-seed",
            "center_ids": [a.first("centers")],
            "desktop_ids": [a.free_desktop],
            "parent_pool_id": a.spare_pool,
            "provisioning": {"center_id": a.ids["centers"][1]},
        },
        "/api/v1/admin/pools/preview": {
            "name": "alpha-seed",
            "pool_id": a.ids["pools"][4],
            "center_ids": [a.first("centers")],
            "desktop_ids": [a.free_desktop],
            "parent_pool_id": a.spare_pool,
            "provisioning": {"center_id": a.ids["centers"][1]},
        },
        "/api/v1/admin/protocol-plans": {"name": "alpha-seed", "protocols": [{"protocol": "vnc"}]},
        "/api/v1/admin/power-plans": {"name": "alpha-seed"},
        "/api/v1/admin/release-plans": {"name": "alpha-seed"},
        "/api/v1/admin/policies": {
            "name": "alpha-seed",
            "entries": [
                {
                    "pool_id": a.spare_pool,
                    "backup_pool_id": a.ids["pools"][2],
                    "protocol_plan_id": a.first("protocol-plans"),
                    "power_plan_id": a.first("power-plans"),
                    "release_plan_id": a.first("release-plans"),
                }
            ],
        },
        "/api/v1/admin/identity-sources": {"name": "alpha-seed", "kind": "local"},
        "/api/v1/admin/assignment-rules": {
            "identity_source_id": a.source,
            "policy_id": a.first("policies"),
            "name": "alpha-seed",
        },
        "/api/v1/admin/users": {"identity_source_id": a.source, "username": "alpha-seed"},
        "/api/v1/admin/roles": {"name": "alpha-seed", "permissions": ["pools:read"]},
        # Documents name objects by name, never by id (tests/test_config_code.py aims
        # them at tenant B); one that manages no section changes nothing.
        "/api/v1/admin/config/plan": {},
        "/api/v1/admin/config/apply": {},
        "/api/v1/admin/api-tokens": {
            "name": "alpha-seed",
            "scopes": ["pools:read"],
            "expires_in_days": 1,
        },
        "/api/v1/admin/assignments": {
            "desktop_id": a.free_desktop,
            "user_id": a.ids["users"][3],
            "pool_id": a.spare_pool,
        },
        "/api/v1/admin/enrolment-keys": {"name": "alpha-seed"},
        "/api/v1/admin/webhooks": {
            "name": "alpha-seed",
            "url": "http://127.0.0.1:9/seed",
            "kinds": ["login"],
            "secret": "alpha-seed-secret-0123456789",
        },
        # Sent to A's own held enrolment (s_path), never by ``controls``: it has a path id.
        "/api/v1/admin/pending-enrolments/{pending_id}/approve": {"desktop_id": a.free_desktop},
        "/api/v1/agent/heartbeat": {"identity": {"instance": "alpha-instance"}},
        "/api/v1/agent/events": {
            # A repeat of the session's state: accepted, and changes nothing.
            "event": "disconnect",
            "user": "alpha-user",
            "session_key": "alpha-s1",
            "desktop_id": a.held_desktop,
        },
    }


def id_fields(
    schemas: Schemas, schema: dict[str, Any], where: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """Paths to every field of a body that names an object (``[]`` steps into a list)."""
    core = schemas.core(schema)
    kind = schemas.kind(schema)
    if kind == "object":
        for name, prop in core["properties"].items():
            if name.endswith(("_id", "_ids")):
                yield (*where, name)
            else:
                yield from id_fields(schemas, prop, (*where, name))
    elif kind == "array":
        yield from id_fields(schemas, core.get("items", {}), (*where, "[]"))


def inject(
    schemas: Schemas, schema: dict[str, Any], seed: Any, path: tuple[str, ...], value: str
) -> Any:
    """``seed`` with the field at ``path`` naming ``value`` (a list field: only ``value``)."""
    core = schemas.core(schema)
    if not path:
        return [value] if schemas.kind(schema) == "array" else value
    step, rest = path[0], path[1:]
    if step == "[]":
        items = core.get("items", {})
        current = list(seed) if isinstance(seed, list) and seed else [schemas.sample(items)]
        current[0] = inject(schemas, items, current[0], rest, value)
        return current
    base = dict(seed) if isinstance(seed, dict) else schemas.sample(core)
    base[step] = inject(schemas, core["properties"][step], base.get(step), rest, value)
    return base


def detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail"))
    except ValueError:
        return response.text[:200]


def same_refusal(
    s: Sweep, label: str, real: httpx.Response, ghost: httpx.Response, b_id: str, ghost_id: str
) -> None:
    """B's object must be refused exactly as an object that never existed (to the global
    admin, who sees both tenants, refused as firmly but perhaps in other words)."""
    if label.endswith(f"[{GLOBAL}]") and 400 <= real.status_code < 500:
        if real.status_code != ghost.status_code:
            s.fail(f"{label}: {real.status_code} {detail(real)!r}, not {ghost.status_code}")
        return
    if real.status_code >= 500:
        s.fail(f"{label}: {real.status_code} {real.text[:200]}")
    elif real.status_code < 400:
        s.fail(f"{label}: accepted ({real.status_code}) {real.text[:200]}")
    elif (real.status_code, detail(real).replace(b_id, ghost_id)) != (
        ghost.status_code,
        detail(ghost),
    ):
        s.fail(
            f"{label}: answers {real.status_code} {detail(real)!r} for B's object but "
            f"{ghost.status_code} {detail(ghost)!r} for one that does not exist"
        )


# --- the three ways across the wall ----------------------------------------------------
def kind_of(op: Operation, param: str) -> str | None:
    parts = op.path.split("/")
    before = parts[parts.index("{" + param + "}") - 1]
    return before if before in KNOWN_KINDS else PARAM_KINDS.get(param)


KNOWN_KINDS = {
    "tenants",
    "centers",
    "images",
    "desktops",
    "pools",
    "protocol-plans",
    "power-plans",
    "release-plans",
    "policies",
    "identity-sources",
    "assignment-rules",
    "users",
    "assignments",
    "jobs",
    "provisioning-tasks",
    "nodes",
    "roles",
    "api-tokens",
    "enrolment-keys",
    "forgotten-desktops",
    "pending-enrolments",
    "webhooks",
}


def path_body(s: Sweep, op: Operation) -> Any:
    """A body the operation accepts, so a refusal is about the id, not the body."""
    schema = op.body_schema
    if schema is None:
        return None
    core = s.schemas.core(schema)
    if op.method in ("PATCH", "PUT"):
        name, prop = next(iter(core["properties"].items()))
        return {name: s.schemas.sample(prop)}
    return s.schemas.sample(core)


def sweep_ids(s: Sweep, op: Operation) -> None:
    """An operation on a B object answers as it would for an id that never existed."""
    (param,) = op.path_params
    kind = kind_of(op, param)
    if kind is None or kind not in s.b.ids:
        s.fail(f"{op}: the sweep has no tenant-B object for {{{param}}}; teach it")
        return
    body = path_body(s, op)
    ghost_id = uuid.uuid4().hex
    for identity in IDENTITIES:
        ghost = s.send(identity, op.method, op.path.replace("{" + param + "}", ghost_id), body)
        if identity == "tenant_admin" and ghost.status_code not in (403, 404):
            s.fail(f"{op}: a made-up id answers {ghost.status_code} {detail(ghost)!r}, not 404")
        # Refused as a whole to this identity: one B object shows it is refused alike.
        for b_id in s.b.ids[kind][: 1 if ghost.status_code == 403 else None]:
            real = s.send(identity, op.method, op.path.replace("{" + param + "}", b_id), body)
            same_refusal(
                s, f"{op} [{identity}, B's {kind} {b_id[:8]}]", real, ghost, b_id, ghost_id
            )


def b_values(s: Sweep, op: Operation, name: str) -> list[str]:
    """Values of one filter taken from B's own objects of this listing."""
    response = s.api.client.get(
        op.path, params={"limit": "1000"} if _has(op, "limit") else None, headers=s.api.headers
    )
    assert response.status_code == 200, f"{op}: {response.text}"
    body = response.json()
    items = body["items"] if "items" in body else body.get("desktops", [])
    found = []
    for item in items:
        if s.leaks(json.dumps(item)) and item.get(name) is not None:
            value = item[name]
            found.append(str(value).lower() if isinstance(value, bool) else str(value))
    return sorted(set(found))[:3]


def _has(op: Operation, name: str) -> bool:
    return any(p["name"] == name for p in op.query_params)


def check_listing(s: Sweep, label: str, response: httpx.Response, identity: str) -> bool:
    """True when the listing answered; records a leak or a bad answer."""
    if response.status_code == 403:
        return False
    if response.status_code != 200:
        s.fail(f"{label} [{identity}]: {response.status_code} {response.text[:200]}")
        return False
    leaked = s.leaks(response.text)
    if leaked:
        s.fail(f"{label} [{identity}] shows tenant B's {leaked[:5]}")
    body = response.json()
    for item in body.get("items", []) if isinstance(body, dict) else []:
        if isinstance(item, dict) and item.get("tenant_id", s.a.tenant_id) != s.a.tenant_id:
            s.fail(f"{label} [{identity}] lists an item of tenant {item['tenant_id']}")
    return True


def sweep_listing(s: Sweep, op: Operation) -> None:
    """A listing shows none of B's, whatever its filters say."""
    paging = {"limit": "1000"} if _has(op, "limit") else {}
    for identity in IDENTITIES:
        response = s.send(identity, "GET", op.path, query=paging)
        answered = check_listing(s, str(op), response, identity)
        audience = "user" if op.path.startswith("/api/v1/client/") else "tenant_admin"
        # The permission catalog is no tenant's data; every other listing shows A's.
        tenant_data = answered and ("items" in response.json() or audience == "user")
        if (
            tenant_data
            and identity == audience
            and not any(x in response.text.lower() for x in s.a_secrets)
        ):
            s.fail(f"{op} [{identity}] shows nothing of tenant A either: the check proves nothing")
        if not answered:
            continue  # refused as a whole: no filter can open it
        for param in op.query_params:
            name = param["name"]
            if name in ("limit", "offset"):
                continue
            schema = param.get("schema", {})
            formats = {schema.get("format")} | {v.get("format") for v in schema.get("anyOf", [])}
            if "date-time" in formats:
                values = ["2000-01-01T00:00:00Z"]
            elif name == "tenant_id":
                values = [s.b.tenant_id]
            elif schema.get("type") == "boolean":
                values = ["true", "false"]
            else:
                values = b_values(s, op, name)
            if not values:
                s.fail(f"{op}: no tenant-B object has a value for ?{name}=; teach the sweep")
            for value in values:
                found = s.send(identity, "GET", op.path, query={**paging, name: value})
                check_listing(s, f"{op}?{name}={value[:12]}", found, identity)


def sweep_references(s: Sweep, op: Operation, seed: dict[str, Any]) -> None:
    """A body that names a B object is refused as a made-up id would be."""
    schema = op.body_schema
    assert schema is not None
    paths = list(id_fields(s.schemas, schema))
    for path in paths:
        kind = FIELD_KINDS.get(path[-1])
        if kind is None:
            s.fail(f"{op}: the sweep does not know what {'.'.join(path)} names; teach it")
            continue
        ghost_id = uuid.uuid4().hex
        b_ids = (
            s.b.ids[kind]
            if kind != "desktops"
            else [s.b.free_desktop, s.b.held_desktop, s.b.cloud_desktop]
        )
        # Naming B's tenant is the global admin's right; naming B's objects from A is not.
        identities = IDENTITIES if path == ("tenant_id",) else (*IDENTITIES, GLOBAL)
        for identity in identities:
            base = seed
            if identity == GLOBAL and "tenant_id" in s.schemas.core(schema)["properties"]:
                base = {**seed, "tenant_id": s.a.tenant_id}
            ghost_body = inject(s.schemas, schema, fresh(s, base), path, ghost_id)
            ghost = s.send(identity, op.method, s_path(s, op), ghost_body)
            for b_id in b_ids[: 1 if ghost.status_code == 403 else None]:
                body = inject(s.schemas, schema, fresh(s, base), path, b_id)
                real = s.send(identity, op.method, s_path(s, op), body)
                same_refusal(
                    s,
                    f"{op} {'.'.join(path)}=B's {b_id[:8]} [{identity}]",
                    real,
                    ghost,
                    b_id,
                    ghost_id,
                )


def check_agent_credentials(s: Sweep, op: Operation) -> None:
    """Enrolment and refresh naming B's desktop with a made-up secret: 401, nothing told."""
    for b_desktop in (s.b.held_desktop, s.b.cloud_desktop):
        body = (
            {"desktop_id": b_desktop, "refresh_secret": "guessed"}
            if op.path.endswith("/token")
            else {"poll_handle": "dbp1.guessed"}
            if op.path.endswith("/poll")
            else {"secret": f"dbe1.{b_desktop}.9999999999.Zm9yZ2Vk"}
        )
        for identity in (None, *IDENTITIES):
            answer = s.send(identity, op.method, op.path, body)
            if answer.status_code != 401 or s.leaks(answer.text):
                s.fail(f"{op} [{identity}]: {answer.status_code} {answer.text[:200]}")


def fresh(s: Sweep, seed: dict[str, Any]) -> dict[str, Any]:
    """The seed under a new name: were B's object accepted, the create would succeed
    rather than clash with the seed's own object."""
    return {**seed, **{k: f"alpha-case-{s.sent}" for k in ("name", "username") if k in seed}}


def s_path(s: Sweep, op: Operation) -> str:
    """The operation's path, aimed at the object A made with the create seed."""
    if not op.path_params:
        return op.path
    (param,) = op.path_params
    resource = op.path.split("/")[4]
    return op.path.replace("{" + param + "}", s.a.ids[f"seeded-{resource}"][0])


# --- the test --------------------------------------------------------------------------
def controls(s: Sweep, seeds: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every seed is accepted from A, so a refusal of its B variant is about B alone;
    returns the PATCH seeds made from them (objects A just created are their targets)."""
    patch_seeds: dict[str, dict[str, Any]] = {}
    for op in operations(s.doc):
        if op.method == "POST" and op.path in seeds and "{" not in op.path:
            identity = AGENT if op.path.startswith("/api/v1/agent/") else "tenant_admin"
            response = s.send(identity, "POST", op.path, seeds[op.path])
            if response.status_code == 403:
                continue  # closed to tenant admins as a whole (tenants): nothing to aim
            assert response.status_code in (200, 201), f"{op}: {response.text}"
            made = response.json()
            assert made.get("tenant_id", s.a.tenant_id) == s.a.tenant_id, f"{op}: {made}"
            resource = op.path.split("/")[-1]
            if resource == "assignments":
                undo = s.send(identity, "DELETE", f"{op.path}/{s.a.free_desktop}")
                assert undo.status_code == 204, undo.text
            elif "id" in made:
                s.a.add(f"seeded-{resource}", made["id"])
    for op in operations(s.doc):
        schema = op.body_schema
        if op.method not in ("PATCH", "PUT") or schema is None:
            continue
        create = seeds.get(op.path.rsplit("/", 1)[0], {})
        fields = {p[0] for p in id_fields(s.schemas, schema)}
        body = {k: v for k, v in create.items() if k in fields}
        if fields and body.keys() == fields:
            response = s.send("tenant_admin", op.method, s_path(s, op), body)
            assert response.status_code == 200, f"{op}: {response.text}"
            patch_seeds[op.path] = body
        elif fields:
            s.fail(f"{op}: the create seed names no object for {sorted(fields - body.keys())}")
    # A's own objects answer, and show nothing of B's (a pool's members, its queue...).
    # Here, before the snapshot: a descriptor fetch is a connection, an event.
    for op in operations(s.doc):
        if op.method != "GET" or not op.path_params:
            continue
        (param,) = op.path_params
        kind = kind_of(op, param)
        client = op.path.startswith("/api/v1/client/")
        targets = [s.a.held_desktop] if client else s.a.ids.get(kind or "", [])
        for identity in IDENTITIES:
            for target in targets:
                response = s.send(identity, "GET", op.path.replace("{" + param + "}", target))
                # 403 is a global resource (tenants, jobs) closed to tenant admins.
                audience = identity == ("user" if client else "tenant_admin")
                # Sign-in starts name a source, not an object: no own one to find here.
                signin = op.path.startswith("/api/v1/auth/")
                if audience and not signin and response.status_code not in (200, 403):
                    s.fail(f"{op}: tenant A's own {kind} {target} answers {response.status_code}")
                if s.leaks(response.text):
                    s.fail(
                        f"{op} on A's {kind} [{identity}] shows B's {s.leaks(response.text)[:5]}"
                    )
    return patch_seeds


def check_power_on_connect(s: Sweep, sim: CloudSim) -> None:
    """A's queued user connects to their stopped cloud desktop: the cloud is told to start
    it. B's twin, stopped and held by B's queued user, is the sweep's power target."""
    starts = sim.request_count(method="POST", path="/action")
    response = s.send("waiting", "POST", f"/api/v1/client/desktops/{s.a.cloud_desktop}/connect", {})
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "starting"
    assert sim.request_count(method="POST", path="/action") == starts + 1


def check_public(s: Sweep) -> None:
    for path in PUBLIC_TEXT:
        if path == "/metrics":  # behind the operator's metrics token, not a user's
            token = s.api.ctx.settings.metrics_token
            metrics = s.http.get(path, headers={"Authorization": f"Bearer {token}"})
            response = s.loop.run_until_complete(metrics)
        else:
            response = s.send(None, "GET", path)
        assert response.status_code == 200, response.text
        if s.leaks(response.text):
            s.fail(f"GET {path} shows tenant B's {s.leaks(response.text)[:5]}")


def check_login(s: Sweep) -> None:
    """A's user cannot log in to B, and B's name is no more known than a made-up one.
    Before the snapshot: a failed login is an event in the tenant it was tried on."""
    answers = []
    for tenant, source in (
        ("zebra", None),
        ("ghost", None),
        ("alpha", "zebra-extra"),
        ("alpha", "ghost"),
    ):
        body = {
            "username": "alpha-user",
            "password": USER_PASSWORD,
            "tenant": tenant,
            "source": source,
        }
        response = s.send(None, "POST", LOGIN, {k: v for k, v in body.items() if v is not None})
        answers.append((response.status_code, detail(response)))
    assert answers[0] == answers[1] and answers[0][0] == 401, answers
    assert answers[2] == answers[3] and answers[2][0] == 401, answers


def check_explain(s: Sweep) -> None:
    """Explaining B's user, or naming B's tenant or source, answers as for made-up ones."""
    pairs = (
        ({"username": "zebra-user"}, {"username": "ghost-user"}, "zebra-user", "ghost-user"),
        (
            {"username": "alpha-user", "tenant": "zebra"},
            {"username": "alpha-user", "tenant": "ghost"},
            "zebra",
            "ghost",
        ),
        (
            {"username": "alpha-user", "source": "zebra-extra"},
            {"username": "alpha-user", "source": "ghost"},
            "zebra-extra",
            "ghost",
        ),
    )
    for identity in IDENTITIES:
        for b_body, made_up, b_name, ghost_name in pairs:
            real = s.send(identity, "POST", EXPLAIN, b_body)
            ghost = s.send(identity, "POST", EXPLAIN, made_up)
            same_refusal(
                s, f"POST {EXPLAIN} {b_body} [{identity}]", real, ghost, b_name, ghost_name
            )
            # The name sent may be echoed (as a made-up one is); nothing else of B's.
            leaked = [x for x in s.leaks(real.text) if x not in b_name]
            if leaked:
                s.fail(f"POST {EXPLAIN} [{identity}] shows tenant B's {leaked[:5]}")


def check_event_stream(s: Sweep) -> None:
    """From the first event on (Last-Event-ID 0), whatever the kinds asked, the stream
    shows A's events to A's readers and nothing of B's."""
    for identity in IDENTITIES:
        for kinds in ({}, {"kinds": "login"}, {"kinds": "session"}):
            answer = s.send(
                identity, "GET", EVENT_STREAM, query={"max_s": "0", **kinds}, last_event_id="0"
            )
            if answer.status_code == 403:
                continue
            if answer.status_code != 200 or s.leaks(answer.text):
                shown = s.leaks(answer.text)
                s.fail(f"event stream {kinds} [{identity}]: {answer.status_code} {shown}")
            if identity == "tenant_admin" and not kinds and s.a.tenant_id not in answer.text:
                s.fail(
                    "the event stream shows nothing of tenant A either: the check proves nothing"
                )


def check_usage(s: Sweep) -> None:
    """Usage shows A's row only, whatever the month or format; B's by id is a made-up id."""
    ghost = uuid.uuid4().hex
    for identity in IDENTITIES:
        for query in ({}, {"format": "csv"}, {"month": "2000-01"}, {"tenant_id": s.a.tenant_id}):
            answer = s.send(identity, "GET", USAGE, query=query)
            if answer.status_code == 403:
                continue
            if answer.status_code != 200 or s.leaks(answer.text):
                s.fail(f"usage {query} [{identity}]: {answer.status_code} {answer.text[:200]}")
        real = s.send(identity, "GET", USAGE, query={"tenant_id": s.b.tenant_id})
        made_up = s.send(identity, "GET", USAGE, query={"tenant_id": ghost})
        same_refusal(s, f"usage of B [{identity}]", real, made_up, s.b.tenant_id, ghost)


def test_no_tenant_b_object_can_be_read_listed_changed_connected_to_or_powered(
    sweep: Sweep, sim: CloudSim
) -> None:
    s = sweep
    ops = operations(s.doc)
    seeds = create_seeds(s.a)
    check_login(s)
    patch_seeds = controls(s, seeds)
    check_power_on_connect(s, sim)
    assert s.failures == [], "\n".join(s.failures)

    before, rows_of_b = snapshot(s.api.ctx), b_rows(s.api.ctx, s.b)
    cloud_writes = sim.request_count(method="POST") + sim.request_count(method="DELETE")
    exercised: dict[str, list[str]] = {}
    for op in ops:
        ways = exercised.setdefault(str(op), [])
        if op.path == LOGIN:
            ways.append("login")  # checked before the snapshot: it writes audit events
            continue
        if op.path in PUBLIC_TEXT:
            ways.append("public text")
            continue
        if op.path == EXPLAIN:
            check_explain(s)
            ways.append("B's user, tenant and source explained")
            continue
        if op.path in SELF_SERVICE:
            for identity in IDENTITIES:
                own = s.send(identity, op.method, op.path, {"code": "000000"})
                if own.status_code >= 500 or s.leaks(own.text):
                    s.fail(f"{op} [{identity}]: {own.status_code} {own.text[:200]}")
            ways.append("the caller's own account")
            continue
        if op.path == LOGOUT:
            for identity, status in ((None, 401), (AGENT, 403)):
                answer = s.send(identity, op.method, op.path)
                if answer.status_code != status or s.leaks(answer.text):
                    s.fail(f"{op} [{identity}]: {answer.status_code} {answer.text[:200]}")
            ways.append("the caller's own tokens, without one")
            continue
        if op.path in AGENT_CREDENTIAL_STEPS:
            check_agent_credentials(s, op)
            ways.append("B's desktop named with a guessed secret")
            continue
        if op.path == GATEWAY_REPORTS:
            report = {
                "gateway_id": "gateway",
                "event": "gateway.close",
                "ticket_id": "t",
                "tenant_id": s.b.tenant_id,
                "user_id": s.b.user,
                "desktop_id": s.b.held_desktop,
                "protocol": "vnc",
                "kind": "forward",
                "started_at": 0,
                "duration_s": 1,
                "bytes_up": 1,
                "bytes_down": 1,
            }
            for identity in (None, *IDENTITIES):
                answer = s.send(identity, op.method, op.path, report)
                if answer.status_code != 401 or s.leaks(answer.text):
                    s.fail(f"{op} [{identity}]: {answer.status_code} {answer.text[:200]}")
            ways.append("B's desktop in a report no token may sign")
            continue
        if op.path == SIGN_IN_CHOICES:
            # Source names are what the page shows; every other kept value is an id.
            b_ids = {
                i for kind, ids in s.b.ids.items() if kind != "identity-source-names" for i in ids
            } | {s.b.tenant_id}
            for identity in (None, *IDENTITIES):
                shown = s.send(identity, "GET", op.path, query={"tenant": s.b.name})
                sources = shown.json().get("sources") if shown.status_code == 200 else None
                if (
                    not sources
                    or any(set(x) != {"name", "domain", "kind"} for x in sources)
                    or any(i in shown.text for i in b_ids)
                ):
                    s.fail(f"{op} [{identity}]: {shown.status_code} {shown.text[:200]}")
            ways.append("a login page's public choices: names and kinds, no ids")
            continue
        if op.path == EVENT_STREAM:
            check_event_stream(s)
            ways.append("the whole stream from the first event, per kind")
            continue
        if op.path == USAGE:
            check_usage(s)
            ways.append("usage of every tenant, of B's by id, as JSON and CSV")
            continue
        if op.path in SIGN_IN_STEPS:
            for identity in IDENTITIES:
                step = s.send(identity, op.method, op.path, {} if op.body_schema else None)
                if step.status_code >= 500 or step.status_code < 400 or s.leaks(step.text):
                    s.fail(f"{op} [{identity}]: {step.status_code} {step.text[:200]}")
            ways.append("sign-in step without a state")
            continue
        if op.path_params:
            sweep_ids(s, op)
            ways.append("B's ids in the path")
        elif op.method == "GET":
            sweep_listing(s, op)
            ways.append("listing")
        schema = op.body_schema
        if schema is not None and any(True for _ in id_fields(s.schemas, schema)):
            seed = seeds.get(op.path) if op.method == "POST" else patch_seeds.get(op.path)
            if seed is None:
                s.fail(f"{op}: no seed body to aim at tenant B; teach the sweep")
            else:
                sweep_references(s, op, seed)
                ways.append("B's ids in the body")
        elif op.method == "POST" and op.path in seeds:
            # A create that names no object: its seed was sent by A's admin before the
            # snapshot, and landed in A's tenant or was refused as a whole.
            ways.append("create without references")
    check_public(s)
    mixed = s.send(
        GLOBAL,
        "POST",
        "/api/v1/admin/assignments",
        {"desktop_id": s.a.free_desktop, "user_id": s.b.user},
    )
    assert mixed.status_code == 422, mixed.text
    assert detail(mixed) == "user zebra-user and desktop alpha-001 are in different tenants"
    for op_name in sorted(op for op, ways in exercised.items() if not ways):
        s.fail(f"{op_name}: the sweep does not know how to aim it at tenant B; teach it")
    assert s.failures == [], f"{len(s.failures)} findings:\n" + "\n".join(s.failures[:80])
    assert b_rows(s.api.ctx, s.b) == rows_of_b
    after = snapshot(s.api.ctx)
    changed = [t for t in before if before[t] != after[t]]
    assert changed == [], f"the sweep changed {changed}"
    assert sim.request_count(method="POST") + sim.request_count(method="DELETE") == cloud_writes
    assert s.api.get(f"desktops/{s.b.cloud_desktop}")["power_state"] == "stopped"
    assert s.sent > 1500, s.sent
    names_are_per_tenant(s, seeds)


def names_are_per_tenant(s: Sweep, seeds: dict[str, dict[str, Any]]) -> None:
    """A name B uses is free in A: a clash would tell A that B has such an object.
    Last, since it writes B's names into A."""
    tried = 0
    clashes: list[str] = []
    for path, seed in seeds.items():
        resource = path.rsplit("/", 1)[1]
        key = next((k for k in ("name", "username") if k in seed), None)
        if key is None or resource not in s.b.ids or resource == "tenants":
            continue
        found = [s.send(GLOBAL, "GET", f"{path}/{i}") for i in s.b.ids[resource]]
        if any(f.status_code == 405 for f in found):
            continue  # no object to read back (API tokens): their names are not shown
        names = [f.json()[key] for f in found]
        theirs = next(n for n in names if n.startswith(s.b.name))  # not "local"
        response = s.send("tenant_admin", "POST", path, {**seed, key: theirs})
        assert response.status_code == 201, f"{path} {key}={theirs}: {response.text}"
        # Within A the name is now taken (where names are unique: rules' are not).
        again = s.send("tenant_admin", "POST", path, {**seed, key: theirs})
        assert again.status_code in (201, 409), f"{path} {key}={theirs}: {again.text}"
        clashes.append(detail(again))
        tried += 1
    assert "an identity source with that name already exists" in clashes
    assert "a pool with that name already exists" in clashes
    assert tried >= 8

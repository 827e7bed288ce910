"""The bad-input sweep: every endpoint of the OpenAPI document, malformed every way.

No case may produce a 5xx; every 4xx is an ``application/problem+json`` document with a
short, non-empty ``detail``; and no failed request leaves anything behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from deskbroker.config import Settings
from deskbroker.security import TOKEN_AUDIENCE, TokenSigner
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Base, Event
from tests.helpers import USER_PASSWORD, Api
from tests.openapi_cases import (
    BAD_IDS,
    Case,
    Operation,
    Schemas,
    body_cases,
    operations,
    query_cases,
)

# The OpenID Connect sign-in: its callers have no token yet, as at the password login.
OIDC_SIGN_IN = {
    "/api/v1/auth/oidc/{source}/start",
    "/api/v1/auth/oidc/callback",
    "/api/v1/auth/oidc/{source}/device",
    "/api/v1/auth/oidc/device/poll",
    "/api/v1/auth/oidc/exchange",
}
# The second step of a password login takes a challenge, not a bearer token.
SECOND_FACTOR = {"/api/v1/auth/login/totp", "/api/v1/auth/login/totp/enrol"}
# An agent enrols with its secret and refreshes with its refresh secret: no token yet.
AGENT_CREDENTIALS = {"/api/v1/agent/enrol", "/api/v1/agent/token", "/api/v1/agent/enrol/poll"}
# The login page's choices (GET /api/v1/auth/sources) are asked before anyone signs in.
SIGN_IN_CHOICES = "/api/v1/auth/sources"
PUBLIC = {
    "/api/v1/auth/login",
    "/healthz",
    "/readyz",
    "/metrics",
    SIGN_IN_CHOICES,
    *OIDC_SIGN_IN,
    *SECOND_FACTOR,
    *AGENT_CREDENTIALS,
}
# Seeds that pass validation and are then refused, as they must be: a wrong password, a
# challenge no broker signed, a code with no enrolment to confirm.
REFUSED_SEEDS = {
    "/api/v1/auth/login": 401,
    "/api/v1/auth/login/totp": 401,
    "/api/v1/auth/login/totp/enrol": 401,
    "/api/v1/me/totp/confirm": 409,
    "/api/v1/agent/enrol": 401,
    "/api/v1/agent/token": 401,
    "/api/v1/agent/enrol/poll": 401,
    # Signed by a gateway, never by a token; this broker has no gateway key.
    "/api/v1/gateway/reports": 401,
    # The world's policy lets its users power nothing: valid, and refused for that alone.
    "/api/v1/client/desktops/{desktop_id}/power": 403,
    # The world's pools are on a static center, which cannot rebuild: valid, and refused
    # for that alone; so nothing is rolling to pause, resume or roll back.
    "/api/v1/admin/pools/{pool_id}/rollout": 409,
    "/api/v1/admin/pools/{pool_id}/rollout/pause": 409,
    "/api/v1/admin/pools/{pool_id}/rollout/resume": 409,
    "/api/v1/admin/pools/{pool_id}/rollout/roll-back": 409,
}


@dataclass
class World:
    """Real objects of every kind, so path ids and seed bodies reach the handlers."""

    api: Api
    doc: dict[str, Any]
    ids: dict[str, str]
    user_token: str
    agent_token: str
    # A client that answers a server error with its 500 instead of raising it.
    sweeper: TestClient
    # The same without a thread hop per request: the sweeps send thousands.
    loop: asyncio.AbstractEventLoop
    fast: httpx.AsyncClient

    @property
    def schemas(self) -> Schemas:
        return Schemas(self.doc)

    def real_path(self, op: Operation) -> str:
        parts = op.path.split("/")
        for n, part in enumerate(parts):
            if part.startswith("{"):
                resource = parts[n - 1]
                if op.path.startswith("/api/v1/client/desktops"):
                    resource = "held-desktop"
                if resource == "assignments":
                    resource = "held-desktop"
                parts[n] = self.ids.get(resource, "does-not-exist")
        return "/".join(parts)

    def bad_paths(self, op: Operation) -> list[str]:
        paths = []
        for bad in BAD_IDS:
            parts = op.path.split("/")
            paths.append("/".join(bad if p.startswith("{") else p for p in parts))
        return paths

    def token_for(self, op: Operation) -> str:
        if op.path.startswith("/api/v1/client/"):
            return self.user_token
        if op.path.startswith("/api/v1/agent/"):
            return self.agent_token
        return self.api.token

    def seed(self, op: Operation) -> dict[str, Any]:
        """A body the operation accepts (or refuses only for a reason past validation)."""
        if op.method == "PATCH":
            return {}
        ids = self.ids
        seeds: dict[str, dict[str, Any]] = {
            "/api/v1/auth/login": {"username": "nobody", "password": "wrong-password"},
            "/api/v1/auth/login/totp": {"challenge": "not-a-challenge", "code": "123456"},
            "/api/v1/auth/login/totp/enrol": {"challenge": "not-a-challenge"},
            "/api/v1/me/totp/confirm": {"code": "123456"},
            "/api/v1/me/totp": {"code": "123456"},
            "/api/v1/auth/oidc/{source}/device": {"tenant": "default"},
            "/api/v1/auth/oidc/device/poll": {"device_handle": "no-such-device-sign-in"},
            "/api/v1/client/desktops/{desktop_id}/connect": {"protocol": "rdp"},
            "/api/v1/agent/events": {"event": "login", "user": "user0"},
            "/api/v1/agent/heartbeat": {},
            "/api/v1/agent/enrol": {"secret": "not-an-enrolment-secret"},
            "/api/v1/agent/token": {"desktop_id": ids["desktops"], "refresh_secret": "guess"},
            "/api/v1/agent/enrol/poll": {"poll_handle": "dbp1.not-a-handle"},
            "/api/v1/admin/enrolment-keys": {"name": "sweep"},
            "/api/v1/admin/webhooks": {
                "name": "sweep",
                "url": "http://127.0.0.1:9/sweep",
                "kinds": ["login"],
                "secret": "sweep-secret-0123456789",
            },
            "/api/v1/admin/pending-enrolments/{pending_id}/approve": {
                "desktop_id": ids["desktops"]
            },
            "/api/v1/admin/pending-enrolments/{pending_id}/deny": {"reason": "sweep"},
            "/api/v1/admin/tenants": {"name": "sweep"},
            "/api/v1/admin/centers": {"name": "sweep", "kind": "static", "params": {}},
            "/api/v1/admin/pools": {"name": "sweep", "center_ids": [ids["centers"]]},
            "/api/v1/admin/protocol-plans": {"name": "sweep", "protocols": [{"protocol": "rdp"}]},
            "/api/v1/admin/power-plans": {"name": "sweep"},
            "/api/v1/admin/release-plans": {"name": "sweep"},
            "/api/v1/admin/policies": {"name": "sweep", "entries": [{"pool_id": ids["pools"]}]},
            "/api/v1/admin/identity-sources": {"name": "sweep", "kind": "local"},
            "/api/v1/admin/assignment-rules": {"identity_source_id": ids["identity-sources"]},
            "/api/v1/admin/users": {
                "identity_source_id": ids["identity-sources"],
                "username": "sweep",
            },
            "/api/v1/admin/assignments": {"desktop_id": ids["desktops"], "user_id": ids["users"]},
            "/api/v1/admin/roles": {"name": "sweep", "permissions": ["pools:read"]},
            "/api/v1/admin/api-tokens": {
                "name": "sweep",
                "scopes": ["pools:read"],
                "expires_in_days": 1,
            },
            "/api/v1/admin/users/{user_id}/unlock": {},
            "/api/v1/admin/desktops/{desktop_id}/power": {"action": "reboot"},
            "/api/v1/admin/desktops/{desktop_id}/drain": {"message": "sweep"},
            "/api/v1/admin/pools/{pool_id}/drain": {"message": "sweep"},
            "/api/v1/admin/centers/{center_id}/drain": {"message": "sweep"},
            "/api/v1/admin/sessions/{session_id}/end": {"reason": "sweep"},
            "/api/v1/admin/sessions/{session_id}/message": {"message": "sweep"},
            "/api/v1/admin/pools/preview": {"name": "sweep", "center_ids": [ids["centers"]]},
            "/api/v1/admin/pools/{pool_id}/rollout": {"image": "sweep"},
            "/api/v1/admin/pools/{pool_id}/upkeep": {"refresh_on_release": False},
            "/api/v1/client/desktops/{desktop_id}/power": {"action": "start"},
            "/api/v1/admin/explain": {"username": "user1", "client_address": "10.1.2.3"},
            # A document that manages no section: valid, and changes nothing.
            "/api/v1/admin/config/plan": {},
            "/api/v1/admin/config/apply": {},
            "/api/v1/gateway/reports": {
                "gateway_id": "gateway",
                "event": "gateway.close",
                "ticket_id": "t",
                "tenant_id": "t",
                "user_id": "u",
                "desktop_id": ids["desktops"],
                "protocol": "vnc",
                "kind": "forward",
                "started_at": 0,
                "duration_s": 1,
                "bytes_up": 1,
                "bytes_down": 1,
            },
        }
        return seeds[op.path]


@pytest.fixture
def world(api: Api) -> Iterator[World]:
    api.seed_pool(3, users=2)
    held = api.login("user0")["offers"][0]["desktop"]["id"]
    user_token = api.login("user0")["token"]
    ids = dict(
        centers=api.ids["center"],
        pools=api.ids["pool"],
        policies=api.ids["policy"],
        **{"held-desktop": held},
    )
    desktops = api.get("desktops")["items"]
    ids["desktops"] = next(d["id"] for d in desktops if d["assigned_user_id"] is None)
    ids["identity-sources"] = api.source_id()
    ids["assignment-rules"] = api.get("assignment-rules")["items"][0]["id"]
    ids["users"] = api.get("users?username=user1")["items"][0]["id"]
    ids["tenants"] = api.post("tenants", {"name": "other"})["id"]
    ids["roles"] = api.post("roles", {"name": "seeded", "permissions": ["*:read"]})["id"]
    ids["api-tokens"] = api.post(
        "api-tokens", {"name": "seeded", "scopes": ["*:read"], "expires_in_days": 1}
    )["id"]
    for plan, body in (
        ("protocol-plans", {"protocols": [{"protocol": "vnc"}]}),
        ("power-plans", {"rules": [{"event": "logout", "after_minutes": 5, "action": "nothing"}]}),
        ("release-plans", {"rules": [{"event": "logout", "after_minutes": 5, "action": "keep"}]}),
    ):
        ids[plan] = api.post(plan, {"name": f"{plan}-1", **body})["id"]
    # An enrolment key and an agent enrolment it holds for approval.
    key = api.post("enrolment-keys", {"name": "seeded"})
    ids["enrolment-keys"] = key["id"]
    waiting = api.client.post(
        "/api/v1/agent/enrol",
        json={"secret": key["key"], "identity": {"addresses": ["192.0.2.99"]}},
    )
    assert waiting.status_code == 202, waiting.text
    ids["pending-enrolments"] = waiting.json()["pending_id"]
    ids["webhooks"] = api.post(
        "webhooks",
        {
            "name": "seeded",
            "url": "http://127.0.0.1:9/seeded",
            "kinds": ["login"],
            "secret": "seeded-secret-0123456789",
        },
    )["id"]
    doc = openapi_document(api)
    agent_token = api.post(f"desktops/{held}/agent-token", {})["token"]
    reported = api.client.post(
        "/api/v1/agent/events",
        json={"event": "login", "user": "user0"},
        headers={"Authorization": f"Bearer {agent_token}"},
    )
    assert reported.status_code == 200, reported.text
    ids["sessions"] = reported.json()["session_id"]
    # The same application, without re-raising: a 500 is a finding to collect, not a crash.
    sweeper = TestClient(api.client.app, raise_server_exceptions=False)
    loop = asyncio.new_event_loop()
    transport = httpx.ASGITransport(app=api.client.app, raise_app_exceptions=False)
    fast = httpx.AsyncClient(transport=transport, base_url="http://testserver")
    yield World(api, doc, ids, user_token, agent_token, sweeper, loop, fast)
    loop.run_until_complete(fast.aclose())
    loop.close()


_DOCUMENT: dict[str, Any] = {}


def openapi_document(api: Api) -> dict[str, Any]:
    """The document as the API serves it; the same code serves the same one, so once."""
    if not _DOCUMENT:
        response = api.client.get("/api/v1/openapi.json")
        assert response.status_code == 200
        _DOCUMENT.update(response.json())
    return _DOCUMENT


def snapshot(ctx: BrokerContext) -> dict[str, list[str]]:
    """Every row of every table but the event log and the failed sign-in counts (both
    written by design when a request is refused), in a comparable form."""
    out: dict[str, list[str]] = {}
    with ctx.db.read() as session:
        for table in Base.metadata.sorted_tables:
            if table.name in ("events", "login_throttle"):
                continue
            out[table.name] = sorted(repr(tuple(r)) for r in session.execute(select(table)))
    return out


def count_events(ctx: BrokerContext) -> int:
    """The newest event id: events after it are the ones a test caused."""
    with ctx.db.read() as session:
        return int(session.scalar(select(func.max(Event.id))) or 0)


def send(world: World, method: str, path: str, case: Case, token: str | None) -> httpx.Response:
    headers = dict(case.headers)
    if token is not None:
        headers.setdefault("Authorization", f"Bearer {token}")
    if case.content_type is not None and case.body is not None:
        headers["Content-Type"] = case.content_type
    url = f"{path}?{case.query}" if case.query else path
    request = world.fast.request(method, url, content=case.body, headers=headers)
    return world.loop.run_until_complete(request)


def problems(response: httpx.Response, case: Case) -> list[str]:
    """What is wrong with one response; empty when it is right."""
    status = response.status_code
    found = []
    if status >= 500:
        found.append(f"{status}: {response.text[:300]}")
    elif case.must_fail and status < 400:
        found.append(f"accepted ({status}): {response.text[:200]}")
    if status >= 400:
        kind = response.headers.get("content-type", "")
        if not kind.startswith("application/problem+json"):
            found.append(f"{status} with content-type {kind!r}")
            return found
        body = response.json()
        detail = body.get("detail")
        if not isinstance(detail, str) or not detail.strip():
            found.append(f"{status} without a detail: {body}")
        elif len(detail) > 600:
            found.append(f"{status} with a {len(detail)}-character detail")
        if body.get("status") != status or not body.get("title"):
            found.append(f"{status} with a bad problem document: {body}")
    return found


def report(failures: list[str]) -> str:
    return f"{len(failures)} bad responses:\n" + "\n".join(failures[:60])


def test_openapi_document_is_complete_and_bounded(api: Api) -> None:
    """Every operation is in the document and says it needs a token, and no request field
    is unbounded: a field without a limit is where a megabyte of input gets in."""
    doc = openapi_document(api)
    ops = operations(doc)
    assert {op.path for op in ops} >= PUBLIC
    assert len(ops) >= 70
    unsecured = [str(op) for op in ops if op.path not in PUBLIC and not op.secured]
    assert unsecured == []
    schemas = Schemas(doc)
    gaps = []
    for op in ops:
        schema = op.body_schema
        if schema is not None:
            gaps += [f"{op}: {gap}" for gap in schemas.property_gaps(schema)]
    assert gaps == [], "\n".join(gaps)


def test_seed_bodies_are_accepted(world: World) -> None:
    """The sweep breaks one thing at a time in these bodies, so they must be good ones."""
    for op in operations(world.doc):
        if op.body_schema is None or op.method != "POST":
            continue
        response = send(
            world,
            op.method,
            world.real_path(op),
            Case("seed", body=httpx.Request("POST", "/", json=world.seed(op)).content),
            world.token_for(op),
        )
        if op.path in REFUSED_SEEDS:
            assert response.status_code == REFUSED_SEEDS[op.path], f"{op}: {response.text}"
        elif op.path.endswith("/power"):
            # The world's desktops are static machines: valid, and refused for that alone.
            assert response.status_code == 409, response.text
            assert "cannot power machines" in response.json()["detail"]
        elif op.path.startswith("/api/v1/admin/pending-enrolments/"):
            # One held enrolment: approved or denied, whichever comes first; the other is
            # refused because it is decided.
            assert response.status_code in (200, 409), f"{op}: {response.text}"
            if response.status_code == 409:
                assert "decided already" in response.json()["detail"]
        elif op.path in OIDC_SIGN_IN:  # the world has no OpenID source: refused in words
            assert response.status_code in (400, 404), f"{op}: {response.text}"
        elif op.path.startswith("/api/v1/admin/sessions/{session_id}/"):
            # Queued for the agent (202), or the session the /end seed ended before: valid.
            assert response.status_code in (200, 202) or (
                response.status_code == 409 and "has already ended" in response.text
            ), f"{op}: {response.text}"
        else:
            assert response.status_code in (200, 201, 202), f"{op}: {response.text}"


def test_malformed_bodies(world: World) -> None:
    before, events_before = snapshot(world.api.ctx), count_events(world.api.ctx)
    failures = []
    sent = 0
    for op in operations(world.doc):
        schema = op.body_schema
        if schema is None:
            continue
        for case in body_cases(world.schemas, schema, world.seed(op)):
            response = send(world, op.method, world.real_path(op), case, world.token_for(op))
            sent += 1
            failures += [f"{op} [{case.label}] {p}" for p in problems(response, case)]
    assert sent > 800
    assert failures == [], report(failures)
    assert snapshot(world.api.ctx) == before
    # Only failed logins are recorded; no admin change, assignment or connection.
    with world.api.ctx.db.read() as session:
        kinds = set(session.scalars(select(Event.kind).where(Event.id > events_before)).all())
    assert kinds <= {"login_failed"}


def _sweep_path_ids(world: World) -> None:
    before = snapshot(world.api.ctx)
    failures = []
    for op in operations(world.doc):
        if not op.path_params:
            continue
        seed = world.seed(op) if op.body_schema is not None else None
        body = None if seed is None else httpx.Request("POST", "/", json=seed).content
        if op.method == "PATCH":
            body = b'{"name": "renamed"}'
        for path in world.bad_paths(op):
            case = Case(f"id {path.rsplit('/', 2)[-2:]}", body=body)
            response = send(world, op.method, path, case, world.token_for(op))
            failures += [f"{op} [{path[:80]}] {p}" for p in problems(response, case)]
    assert failures == [], report(failures)
    assert snapshot(world.api.ctx) == before


def _sweep_query_parameters(world: World) -> None:
    before = snapshot(world.api.ctx)
    failures = []
    for op in operations(world.doc):
        if op.method != "GET" or op.path in PUBLIC:
            continue
        for case in query_cases(op):
            response = send(world, op.method, world.real_path(op), case, world.token_for(op))
            failures += [f"{op} [{case.label}] {p}" for p in problems(response, case)]
    assert failures == [], report(failures)
    assert snapshot(world.api.ctx) == before


def _signed(settings: Settings, **claims: Any) -> str:
    key = hashlib.sha256(("token:" + settings.secret_key).encode()).digest()
    now = int(time.time())
    payload = {
        "sub": "u",
        "tid": "t",
        "role": "global_admin",
        "name": "x",
        "iat": now,
        "exp": now + 600,
        "aud": TOKEN_AUDIENCE,
        **claims,
    }
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, "HS256")


def _tampered(token: str) -> str:
    """The token with one character of its signature changed for another: always a
    different signature (swapping two characters that happen to be equal, one token in
    64, changed nothing), and not the last character, whose low bits base64 drops."""
    at = len(token) - 10
    swapped = "B" if token[at] == "A" else "A"
    return token[:at] + swapped + token[at + 1 :]


def bad_credentials(world: World, settings: Settings) -> dict[str, dict[str, str]]:
    expired = TokenSigner(settings.secret_key, ttl_s=-3600).issue(
        user_id="u", tenant_id="t", role="global_admin", username="admin"
    )[0]
    other_key = TokenSigner("some-other-broker", ttl_s=600).issue(
        user_id="u", tenant_id="t", role="global_admin", username="admin"
    )[0]
    unsigned = jwt.encode({"sub": "u", "tid": "t", "role": "global_admin"}, "", algorithm="none")
    admin = world.api.token
    return {
        "no token": {},
        "garbage token": {"Authorization": "Bearer not-a-token"},
        "empty bearer": {"Authorization": "Bearer "},
        "basic auth": {"Authorization": "Basic YWRtaW46YWRtaW4tcGFzc3dvcmQtMQ=="},
        "token without scheme": {"Authorization": admin},
        "truncated token": {"Authorization": f"Bearer {admin[:-5]}"},
        "tampered token": {"Authorization": f"Bearer {_tampered(admin)}"},
        "huge token": {"Authorization": "Bearer " + "a" * 60_000},
        "expired token": {"Authorization": f"Bearer {expired}"},
        "other broker's token": {"Authorization": f"Bearer {other_key}"},
        "unsigned token": {"Authorization": f"Bearer {unsigned}"},
        "token without role": {"Authorization": f"Bearer {_signed(settings, role=None)}"},
        "token with text expiry": {"Authorization": f"Bearer {_signed(settings, exp='soon')}"},
        "token for another audience": {"Authorization": f"Bearer {_signed(settings, aud='x')}"},
    }


EVERY_VARIANT = {
    ("GET", "/api/v1/admin/pools"),
    ("POST", "/api/v1/admin/policies"),
    ("PATCH", "/api/v1/admin/users/{item_id}"),
    ("DELETE", "/api/v1/admin/centers/{item_id}"),
    ("POST", "/api/v1/client/desktops/{desktop_id}/connect"),
    ("GET", "/api/v1/client/desktops"),
}


def _sweep_credentials(world: World, settings: Settings) -> None:
    """No token, a malformed one and an expired one everywhere; every kind of bad
    token on one operation of each method (they all pass through one dependency)."""
    before = snapshot(world.api.ctx)
    failures = []
    creds = bad_credentials(world, settings)
    everywhere = ("no token", "garbage token", "expired token")
    ops = operations(world.doc)
    assert {(op.method, op.path) for op in ops} >= EVERY_VARIANT
    for op in ops:
        seed = world.seed(op) if op.body_schema is not None else None
        body = None if seed is None else httpx.Request("POST", "/", json=seed).content
        for label, headers in creds.items():
            if label not in everywhere and (op.method, op.path) not in EVERY_VARIANT:
                continue
            case = Case(label, body=body, headers=headers, must_fail=op.path not in PUBLIC)
            response = send(world, op.method, world.real_path(op), case, None)
            failures += [f"{op} [{label}] {p}" for p in problems(response, case)]
            if op.path in PUBLIC:
                continue
            if response.status_code != 401:
                failures.append(f"{op} [{label}] answered {response.status_code}, not 401")
            elif response.headers.get("www-authenticate") != "Bearer":
                failures.append(f"{op} [{label}] 401 without WWW-Authenticate: Bearer")
    assert failures == [], report(failures)
    assert snapshot(world.api.ctx) == before
    expired = world.sweeper.get("/api/v1/admin/pools", headers=creds["expired token"])
    assert expired.json()["detail"] == "Your session token has expired; log in again."


def _sweep_plain_user(world: World) -> None:
    before = snapshot(world.api.ctx)
    failures = []
    for op in operations(world.doc):
        if not op.path.startswith("/api/v1/admin/"):
            continue
        seed = world.seed(op) if op.body_schema is not None else None
        body = None if seed is None else httpx.Request("POST", "/", json=seed).content
        if op.method == "PATCH":
            body = b'{"name": "renamed"}'
        case = Case("user token", body=body)
        response = send(world, op.method, world.real_path(op), case, world.user_token)
        failures += [f"{op} {p}" for p in problems(response, case)]
        if response.status_code != 403:
            failures.append(f"{op} answered {response.status_code} to a plain user, not 403")
    assert failures == [], report(failures)
    assert snapshot(world.api.ctx) == before


def test_ten_megabyte_password(world: World) -> None:
    before = snapshot(world.api.ctx)
    password = "p" * (10 * 1024 * 1024)
    for path, body in (
        ("/api/v1/auth/login", {"username": "user0", "password": password}),
        (
            "/api/v1/admin/users",
            {
                "identity_source_id": world.ids["identity-sources"],
                "username": "big",
                "password": password,
            },
        ),
    ):
        response = world.api.client.post(path, json=body, headers=world.api.headers)
        assert response.status_code == 413, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "KiB" in response.json()["detail"]
    # Streamed without a length, the limit still holds and still says why.
    chunks = (b'{"username": "user0", "password": "' + b"p" * 65536 for _ in range(40))
    response = world.api.client.post(
        "/api/v1/auth/login", content=chunks, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    # Long but under the body limit: refused by the field's own limit, clearly.
    response = world.api.client.post(
        "/api/v1/auth/login", json={"username": "user0", "password": "p" * 100_000}
    )
    assert response.status_code == 422
    assert "password" in response.json()["detail"]
    assert snapshot(world.api.ctx) == before
    # And the user can still log in.
    world.api.login("user0", USER_PASSWORD)


def test_messages_read_like_sentences(world: World) -> None:
    api = world.api

    def detail(response: httpx.Response, status: int) -> str:
        assert response.status_code == status, response.text
        return str(response.json()["detail"])

    post = api.client.post
    h = api.headers
    assert detail(post("/api/v1/admin/pools", json={"name": "p", "bogus": 1}, headers=h), 422) == (
        "unknown field 'bogus'"
    )
    assert "name is required" in detail(post("/api/v1/admin/pools", json={}, headers=h), 422)
    assert "not valid JSON" in detail(
        post(
            "/api/v1/admin/pools", content=b"{", headers={**h, "Content-Type": "application/json"}
        ),
        422,
    )
    assert detail(post("/api/v1/admin/pools", json=[1], headers=h), 422) == (
        "the request body must be a JSON object"
    )
    assert detail(post("/api/v1/admin/pools", headers=h), 422) == (
        "the request needs a body: a JSON object"
    )
    deep = post(
        "/api/v1/admin/pools",
        content=b"[" * 50_000 + b"]" * 50_000,
        headers={**h, "Content-Type": "application/json"},
    )
    assert detail(deep, 400).startswith("the request body could not be read as JSON")
    text = detail(
        post(
            "/api/v1/admin/pools",
            json={"name": "p", "provisioning": {"enabled": True, "min_unassigned": 5}},
            headers=h,
        ),
        422,
    )
    assert text == "provisioning: min_unassigned cannot be larger than max_total"
    text = detail(
        post(
            "/api/v1/admin/policies",
            json={"name": "p", "entries": [{"pool_id": "nope"}]},
            headers=h,
        ),
        422,
    )
    assert text == "pool nope does not exist"
    text = detail(api.client.get("/api/v1/admin/pools/" + "x" * 3000, headers=h), 404)
    assert len(text) < 200 and text.endswith("does not exist")
    nul = {"identity_source_id": world.ids["identity-sources"], "username": "a\x00b"}
    assert detail(post("/api/v1/admin/users", json=nul, headers=h), 422) == (
        "username contains a NUL character"
    )
    assert detail(api.client.get("/api/v1/admin/pools?name=a%00b", headers=h), 422) == (
        "name contains a NUL character"
    )


def _render_check(world: World, failures: list[str], label: str) -> None:
    """After accepted edits every listing and object must still render."""
    for op in operations(world.doc):
        if op.method != "GET" or not op.path.startswith("/api/v1/admin/"):
            continue
        # The event stream would stay open for minutes: asked to end at once.
        query = "?max_s=0" if op.path.endswith("/event-stream") else ""
        response = world.sweeper.get(world.real_path(op) + query, headers=world.api.headers)
        if response.status_code >= 500:
            failures.append(f"{label}: then {op} answered {response.status_code}")


def _sweep_nulls(world: World) -> None:
    """Null for each field of each PATCH: a clear 4xx, or a real reset that still renders."""
    failures: list[str] = []
    for op in operations(world.doc):
        schema = op.body_schema
        if schema is None or op.method != "PATCH":
            continue
        for name in world.schemas.core(schema).get("properties", {}):
            case = Case(f"{name}: null", body=b'{"%s": null}' % name.encode(), must_fail=False)
            response = send(world, op.method, world.real_path(op), case, world.api.token)
            failures += [f"{op} [{case.label}] {p}" for p in problems(response, case)]
            if response.status_code < 300:
                again = world.sweeper.get(world.real_path(op), headers=world.api.headers)
                if again.status_code != 200:
                    failures.append(f"{op} [{case.label}] accepted, then GET {again.status_code}")
    _render_check(world, failures, "after nulls")
    assert failures == [], report(failures)


def _sweep_limits(world: World) -> None:
    """Every string at exactly its maxLength, every integer at its bounds: the database
    must hold whatever the schema lets through (PostgreSQL checks column lengths)."""
    failures: list[str] = []
    schemas = world.schemas
    for op in operations(world.doc):
        schema = op.body_schema
        if schema is None or op.method not in ("POST", "PATCH"):
            continue
        if op.path.startswith("/api/v1/client/") or op.path == "/api/v1/auth/login":
            continue
        seed = world.seed(op)
        for n, (name, prop) in enumerate(schemas.core(schema).get("properties", {}).items()):
            core = schemas.core(prop)
            values: list[Any] = []
            if schemas.kind(prop) == "string" and "maxLength" in core:
                longest = "b" * int(core["maxLength"])
                if re.fullmatch(core.get("pattern") or ".*", longest):
                    values.append(longest)
            if schemas.kind(prop) == "integer":
                values += [core.get("minimum"), core.get("maximum")]
            for value in (v for v in values if v is not None):
                body = {**seed, name: value}
                for unique in ("name", "username"):
                    if unique in body and unique != name:
                        body[unique] = f"limit-{n}-{value}"[:60]
                case = Case(f"{name} at {str(value)[:12]}", must_fail=False)
                case = Case(
                    case.label, body=httpx.Request("POST", "/", json=body).content, must_fail=False
                )
                response = send(world, op.method, world.real_path(op), case, world.api.token)
                failures += [f"{op} [{case.label}] {p}" for p in problems(response, case)]
    _render_check(world, failures, "after limits")
    assert failures == [], report(failures)


def test_malformed_path_ids_and_query_parameters(world: World) -> None:
    _sweep_path_ids(world)
    _sweep_query_parameters(world)


def test_every_endpoint_refuses_bad_credentials_and_plain_users(
    world: World, settings: Settings
) -> None:
    _sweep_credentials(world, settings)
    _sweep_plain_user(world)


def test_explicit_nulls_and_values_at_their_limits(world: World) -> None:
    _sweep_nulls(world)
    _sweep_limits(world)

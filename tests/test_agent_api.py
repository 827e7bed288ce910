"""The agent API: sessions through the state machine, agent tokens and their refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
from fastapi.testclient import TestClient

from deskbroker.bootstrap import add_local_user
from deskbroker.errors import NotFound
from deskbroker.security import TOKEN_AUDIENCE
from deskbroker.services.sessions import issue_agent_token
from tests.desktop_agent import Agent, assigned_desktop
from tests.helpers import USER_PASSWORD, Api
from tests.races import raised_while_desktop_held

EVENTS = "/api/v1/agent/events"


def _setup(api: Api) -> tuple[str, Agent]:
    api.seed_pool(2, users=2)
    desktop = assigned_desktop(api, "user0")
    return desktop, Agent.mint(api, desktop)


def test_a_session_moves_through_every_state(api: Api) -> None:
    desktop, agent = _setup(api)
    first = agent.send("login", protocol="rdp", client_address="10.0.0.9")
    assert first["state"] == "logged_in" and first["previous_state"] is None
    session_id = first["session_id"]
    user0 = api.get("users?username=user0")["items"][0]["id"]
    assert first["user_id"] == user0  # the desktop account maps to the broker user
    for event, state in [
        ("disconnect", "disconnected"),
        ("reconnect", "connected"),
        ("lock", "locked"),
        ("unlock", "connected"),
        ("idle", "idle"),
        ("active", "connected"),
        ("logout", "logged_out"),
    ]:
        body = agent.send(event)
        assert (body["session_id"], body["state"], body["changed"]) == (session_id, state, True)

    rows = api.get(f"sessions?desktop_id={desktop}")["items"]
    assert len(rows) == 1
    assert rows[0]["state"] == "logged_out" and rows[0]["ended_at"] is not None
    assert (rows[0]["username"], rows[0]["protocol"], rows[0]["client_address"]) == (
        "user0",
        "rdp",
        "10.0.0.9",
    )
    assert api.get(f"desktops/{desktop}")["agent_state"] == "running"
    kinds = [e["kind"] for e in api.get(f"events?desktop_id={desktop}")["items"]]
    assert kinds.count("session.login") == 1 and kinds.count("session.logout") == 1
    # A new login after a logout is a new session.
    assert agent.send("login")["session_id"] != session_id


def test_an_event_that_cannot_follow_is_a_409_problem(api: Api) -> None:
    desktop, agent = _setup(api)
    agent.send("login")
    agent.send("disconnect")
    response = api.client.post(
        EVENTS,
        json={"event": "lock", "user": "user0"},
        headers={"Authorization": f"Bearer {agent.token}"},
    )
    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert "disconnected" in problem["detail"] and "lock" in problem["detail"]
    assert "reconnect" in problem["detail"]  # it says what may follow
    assert problem["state"] == "disconnected"
    # Nothing changed.
    assert api.get(f"sessions?desktop_id={desktop}")["items"][0]["state"] == "disconnected"

    agent.send("logout")
    after = agent.send("reconnect", status=409)
    assert "no open session" in after["detail"] and "login" in after["detail"]
    never = agent.send("idle", user="nobody", status=409)
    assert "nobody has no open session" in never["detail"]


def test_a_repeated_report_changes_nothing(api: Api) -> None:
    _, agent = _setup(api)
    login = agent.send("login")
    again = agent.send("login")
    assert again["session_id"] == login["session_id"] and again["changed"] is False
    agent.send("disconnect")
    repeat = agent.send("disconnect")
    assert repeat["changed"] is False and repeat["timers_set"] == []


def test_a_full_host_takes_a_repeated_login_of_its_oldest_session(api: Api) -> None:
    # One read finds the session a login repeats and counts the host's room: the match
    # must be found even when it is the oldest of a full host's sessions.
    desktop, agent = _setup(api)
    api.patch(f"desktops/{desktop}", {"max_sessions": 3})
    first = agent.send("login", user="u0")
    for n in (1, 2):
        agent.send("login", user=f"u{n}")
    again = agent.send("login", user="U0")
    assert (again["session_id"], again["changed"]) == (first["session_id"], False)
    full = agent.send("login", user="u3", status=409)["detail"]
    # The oldest sessions are named, oldest first.
    assert "has u0 logged_in, u1 logged_in, u2 logged_in open" in full
    agent.send("disconnect", user="u1")
    # A disconnected session still takes its place on the host.
    assert "allows 3 sessions" in agent.send("login", user="u3", status=409)["detail"]
    # A login after a disconnect is a new session, for which the host has no room either.
    assert "allows 3 sessions" in agent.send("login", user="u1", status=409)["detail"]
    agent.send("logout", user="u1")
    assert agent.send("login", user="u3")["changed"] is True


def test_session_keys_tell_two_sessions_of_one_user_apart(api: Api) -> None:
    desktop, agent = _setup(api)
    api.patch(f"desktops/{desktop}", {"max_sessions": 3})  # a multi-session host
    a = agent.send("login", user="CORP\\user0", session_key="c1")
    b = agent.send("login", user="user0@corp.example", session_key="c2")
    assert a["session_id"] != b["session_id"]
    assert a["user_id"] == b["user_id"] is not None
    assert agent.send("disconnect", user="user0", session_key="c2")["session_id"] == b["session_id"]
    states = {
        s["session_key"]: s["state"] for s in api.get(f"sessions?desktop_id={desktop}")["items"]
    }
    assert states == {"c1": "logged_in", "c2": "disconnected"}
    # A local account the broker does not know is a session all the same.
    local = agent.send("login", user="Administrator", session_key="console")
    assert local["user_id"] is None


def test_agent_tokens_are_refused_when_missing_wrong_or_replaced(
    api: Api, client: TestClient
) -> None:
    desktop, agent = _setup(api)
    body = {"event": "login", "user": "user0"}

    missing = client.post(EVENTS, json=body)
    assert missing.status_code == 401 and "agent token" in missing.json()["detail"]
    garbage = client.post(EVENTS, json=body, headers={"Authorization": "Bearer not-a-jwt"})
    assert garbage.status_code == 401
    forged = jwt.encode(
        {
            "sub": desktop,
            "tid": "t",
            "role": "agent",
            "did": desktop,
            "exp": 2**31,
            "aud": TOKEN_AUDIENCE,
        },
        "another-broker-key-of-32-bytes-or-more",
        algorithm="HS256",
    )
    assert (
        client.post(EVENTS, json=body, headers={"Authorization": f"Bearer {forged}"}).status_code
        == 401
    )

    user_token = api.login("user0")["token"]
    as_user = client.post(EVENTS, json=body, headers={"Authorization": f"Bearer {user_token}"})
    assert as_user.status_code == 403 and "agent token" in as_user.json()["detail"]

    # An agent token is no person: it opens neither client nor admin endpoints.
    auth = {"Authorization": f"Bearer {agent.token}"}
    assert client.get("/api/v1/client/desktops", headers=auth).status_code == 403
    assert client.get("/api/v1/admin/desktops", headers=auth).status_code == 403

    other = next(d["id"] for d in api.get("desktops")["items"] if d["id"] != desktop)
    wrong = agent.send("login", status=403, desktop_id=other)
    assert other in wrong["detail"]

    replacement = Agent.mint(api, desktop)
    stale = agent.send("login", status=401)
    assert "replaced" in stale["detail"]
    assert replacement.send("login")["state"] == "logged_in"

    expired, _, _ = api.ctx.signer.issue_agent(
        desktop_id=desktop, tenant_id="x", desktop_name="d", ttl_s=-60
    )
    assert (
        client.post(EVENTS, json=body, headers={"Authorization": f"Bearer {expired}"}).status_code
        == 401
    )


def test_only_an_admin_of_the_desktop_mints_its_token(api: Api, client: TestClient) -> None:
    desktop, _ = _setup(api)
    user_token = api.login("user1")["token"]
    denied = client.post(
        f"/api/v1/admin/desktops/{desktop}/agent-token",
        headers={"Authorization": f"Bearer {user_token}"},
    )
    assert denied.status_code == 403
    api.post("tenants", {"name": "acme"})
    add_local_user(api.ctx, "acme-admin", USER_PASSWORD, role="tenant_admin", tenant_name="acme")
    login = client.post(
        "/api/v1/auth/login",
        json={"username": "acme-admin", "password": USER_PASSWORD, "tenant": "acme"},
    )
    assert login.status_code == 200, login.text
    other_admin = login.json()["token"]
    hidden = client.post(
        f"/api/v1/admin/desktops/{desktop}/agent-token",
        headers={"Authorization": f"Bearer {other_admin}"},
    )
    assert hidden.status_code == 404
    assert api.post("desktops/nope/agent-token", {}, status=404)["status"] == 404
    minted = api.post(f"desktops/{desktop}/agent-token", {})
    assert minted["expires_at"] > 0 and minted["token_type"] == "bearer"
    assert any(e["kind"] == "agent.token" for e in api.get(f"events?desktop_id={desktop}")["items"])


def test_bad_agent_bodies_are_422(api: Api) -> None:
    _, agent = _setup(api)
    assert agent.send("reboot", status=422)["status"] == 422
    assert agent.send("login", user="", status=422)["status"] == 422
    assert agent.send("login", status=422, colour="red")["status"] == 422
    assert agent.send("login", status=422, at="yesterday")["status"] == 422
    assert agent.send("login", user="a" * 201, status=422)["status"] == 422


def test_one_desktop_token_cannot_fill_the_tenant_session_quota(api: Api) -> None:
    desktop, agent = _setup(api)
    api.patch(f"tenants/{api.get('tenants?name=default')['items'][0]['id']}", {"quota_sessions": 2})
    assert api.get(f"desktops/{desktop}")["max_sessions"] == 1  # a single-user desktop
    agent.send("login", session_key="s0")
    for n in range(1, 5):
        refused = agent.send("login", user=f"made-up{n}", session_key=f"s{n}", status=409)
        assert refused["max_sessions"] == 1
        assert "allows one session at once" in refused["detail"]
        assert "user0 (key 's0') logged_in" in refused["detail"]
    # Still one open session: the tenant's second unit is left for another desktop.
    assert api.get("quota")["sessions"] == {"limit": 2, "used": 1}
    assert [s["session_key"] for s in api.get(f"sessions?desktop_id={desktop}")["items"]] == ["s0"]
    assert not [e for e in api.get(f"events?desktop_id={desktop}")["items"] if "made-up" in str(e)]
    # After the logout the desktop has room again.
    agent.send("logout", session_key="s0")
    assert agent.send("login", user="user0", session_key="s5")["state"] == "logged_in"


def test_a_multi_session_desktop_allows_what_its_admin_set(api: Api) -> None:
    desktop, agent = _setup(api)
    assert api.patch(f"desktops/{desktop}", {"max_sessions": 3})["max_sessions"] == 3
    for n in range(3):
        agent.send("login", user=f"u{n}", session_key=f"k{n}")
    assert (
        "allows 3 sessions at once"
        in agent.send("login", "u3", session_key="k3", status=409)["detail"]
    )
    agent.send("logout", user="u1", session_key="k1")
    agent.send("login", user="u3", session_key="k3")
    for bad in (0, -1, 1001, None, "two"):
        assert api.patch(f"desktops/{desktop}", {"max_sessions": bad}, status=422)["status"] == 422


def test_an_event_far_from_the_brokers_clock_is_refused_in_words(api: Api) -> None:
    desktop, agent = _setup(api)
    now = datetime.now(UTC)
    old = agent.send("login", at=now - timedelta(hours=3), status=422)
    assert "3 hours behind the broker's clock" in old["detail"]
    assert "within 5 minutes" in old["detail"]
    ahead = agent.send("login", at=now + timedelta(minutes=30), status=422)
    assert "30 minutes ahead of the broker's clock" in ahead["detail"]
    assert api.get(f"sessions?desktop_id={desktop}")["items"] == []  # nothing written
    # A little skew is normal; a clock slightly ahead is taken as now.
    started = agent.send("login", at=now - timedelta(minutes=4))
    assert started["state"] == "logged_in"
    [row] = api.get(f"sessions?desktop_id={desktop}")["items"]
    assert datetime.fromisoformat(row["started_at"]).replace(tzinfo=UTC) < now - timedelta(
        minutes=3
    )
    # A backdated disconnect cannot fire a plan that waits an hour at once.
    late = agent.send("disconnect", at=now - timedelta(hours=2), status=422)
    assert "2 hours behind" in late["detail"]


def test_client_address_must_be_an_ip_address(api: Api) -> None:
    desktop, agent = _setup(api)
    for bad in ("not-an-address", "10.0.0.9; rm -rf /", "<script>", "10.0.0.256", "host:80"):
        problem = agent.send("login", client_address=bad, status=422)
        assert "IPv4 or IPv6 address" in str(problem), problem
    assert api.get(f"sessions?desktop_id={desktop}")["items"] == []
    agent.send("login", client_address="2001:DB8::7")
    [row] = api.get(f"sessions?desktop_id={desktop}")["items"]
    assert row["client_address"] == "2001:db8::7"


def test_the_token_is_revoked_when_the_desktop_changes_hands(api: Api, client: TestClient) -> None:
    desktop, agent = _setup(api)
    agent.send("login")
    agent.send("logout")
    user0 = api.login("user0")["token"]
    released = client.post(
        f"/api/v1/client/desktops/{desktop}/release",
        headers={"Authorization": f"Bearer {user0}"},
    )
    assert released.status_code == 204, released.text
    # The previous holder kept the token they could read on the machine: it is refused.
    stale = agent.send("login", "user1", status=401)
    assert "revoked when the desktop was released" in stale["detail"]
    # Reassigned by an administrator: a fresh token works, the old one still does not.
    user1 = api.get("users?username=user1")["items"][0]["id"]
    api.post("assignments", {"desktop_id": desktop, "user_id": user1, "pool_id": api.ids["pool"]})
    fresh = Agent.mint(api, desktop)
    assert fresh.send("login", "user1")["state"] == "logged_in"
    agent.send("logout", "user1", status=401)
    # The admin release rotates too.
    api.delete(f"assignments/{desktop}")
    assert "revoked" in fresh.send("logout", "user1", status=401)["detail"]


def test_minting_for_another_tenants_desktop_neither_locks_nor_waits_for_it(api: Api) -> None:
    """The mint finds the desktop within the caller's tenant as it locks it: naming
    another tenant's desktop (whose row another unit holds) is not found at once, where
    it waited for that unit and then locked the row before looking at its tenant."""
    desktop, _ = _setup(api)
    ctx = api.ctx
    outcome = raised_while_desktop_held(
        ctx,
        desktop,
        lambda: issue_agent_token(ctx, desktop, "another-tenant", "acme-admin"),
        "the mint waited for another tenant's desktop row",
    )
    assert [type(e) for e in outcome] == [NotFound]
    tenant = api.get(f"desktops/{desktop}")["tenant_id"]
    _, _, row = issue_agent_token(ctx, desktop, tenant, "admin")
    assert row.id == desktop

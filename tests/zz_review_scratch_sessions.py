"""Review scratch: a tenant admin ends a global admin's session (no standing check)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from deskbroker.bootstrap import add_local_user
from deskbroker.engine.drivers import DriverCache
from tests.desktop_agent import Agent, fire_due
from tests.helpers import ADMIN_PASSWORD, USER_PASSWORD, Api


def _tad(api: Api) -> Api:
    add_local_user(api.ctx, "tad", USER_PASSWORD, role="tenant_admin")
    return Api(api.client, api.ctx, api.login("tad")["token"])


def test_tenant_admin_ends_global_admins_session_and_takes_the_desktop(api: Api) -> None:
    api.seed_pool(1, users=0, assignment="pooled")
    offers = api.login("admin", ADMIN_PASSWORD)["offers"]
    desk = offers[0]["desktop"]["id"]
    agent = Agent.mint(api, desk)  # the global admin's real agent
    now = datetime.now(UTC)
    agent.send("login", user="admin", at=now)
    tad = _tad(api)
    # The direct route is refused:
    r = tad.delete(f"assignments/{desk}", status=403)
    print("direct release:", r)
    [sess] = [s for s in tad.get("sessions")["items"] if s["username"] == "admin"]
    # ... but ending the session is not:
    out = tad.client.post(f"/api/v1/admin/sessions/{sess['id']}/end", json={"reason": "x"},
                          headers=tad.headers)
    print("end:", out.status_code, out.text)
    assert out.status_code == 200
    for kind in ("message", "lock", "logoff"):
        pass
    assert fire_due(api.ctx, DriverCache(api.ctx), now + timedelta(seconds=5)) == 1
    print("assignments after:", api.get("assignments")["items"])
    users = {u["id"]: u["username"] for u in api.get("users")["items"]}
    [a] = api.get("assignments")["items"]
    print("now held by:", users[a["user_id"]])
    assert users[a["user_id"]] == "tad" and a["desktop_id"] == desk
    # the global admin's session on the machine never ended (the agent reported none)


def test_tenant_admin_orders_global_admins_session(api: Api) -> None:
    api.seed_pool(1, users=0, assignment="persistent")
    desk = api.login("admin", ADMIN_PASSWORD)["offers"][0]["desktop"]["id"]
    agent = Agent.mint(api, desk)
    agent.send("login", user="admin")
    tad = _tad(api)
    [sess] = [s for s in tad.get("sessions")["items"] if s["username"] == "admin"]
    r = tad.client.post(f"/api/v1/admin/sessions/{sess['id']}/message",
                        json={"message": "Your session expired: re-enter your password at https://evil.example"},
                        headers=tad.headers)
    print(r.status_code, r.text)
    assert r.status_code == 202
    for k in ("lock", "logoff"):
        r = tad.client.post(f"/api/v1/admin/sessions/{sess['id']}/{k}", headers=tad.headers)
        print(k, r.status_code)
        assert r.status_code == 202
    r = tad.client.post(f"/api/v1/admin/desktops/{desk}/power", json={"action": "reboot", "force": True}, headers=tad.headers)
    print("power", r.status_code, r.text)

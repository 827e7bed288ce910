"""The portal, the console and the API docs page as HTTP sees them: served from the
package with a strict content security policy; the grants the console draws buttons by;
the pool history API. (What a browser does with them: tests/test_browser.py.)"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import pytest

from deskbroker.bootstrap import add_local_user
from deskbroker.store.tables import PoolStat, utcnow
from tests.desktop_agent import Agent, with_plans
from tests.helpers import USER_PASSWORD, Api

PAGES = ("/portal/", "/console/", "/api/v1/docs")


@pytest.mark.parametrize("path", PAGES)
def test_every_page_and_asset_comes_from_this_broker(api: Api, path: str) -> None:
    page = api.client.get(path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = dict(
        part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    for directive in ("script-src", "style-src", "connect-src", "font-src"):
        assert policy[directive] == "'self'", (directive, policy)
    assert policy["frame-ancestors"] == "'none'"
    assert page.headers["x-frame-options"] == "DENY"
    assets = re.findall(r'(?:src|href)="([^"#][^"]*)"', page.text)
    assert assets
    for asset in assets:
        assert asset.startswith("/static/"), f"{path} loads {asset}"
        answer = api.client.get(asset)
        assert answer.status_code == 200, asset
        assert answer.headers["content-security-policy"] == page.headers["content-security-policy"]
        # A script imports the others by absolute path: each must be here too.
        for imported in re.findall(r'from "(/static/[^"]+)"', answer.text):
            assert api.client.get(imported).status_code == 200, imported


def test_a_bare_folder_is_sent_to_its_page(api: Api) -> None:
    answer = api.client.get("/console", follow_redirects=False)
    assert answer.status_code == 308
    assert answer.headers["location"] == "/console/"


@pytest.mark.parametrize(
    "path", ["/static/nothing.js", "/static/..%2Fpages%2Fportal.html", "/static/vendor/x.js"]
)
def test_no_file_outside_the_asset_folders(api: Api, path: str) -> None:
    answer = api.client.get(path)
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"


def test_grants_list_what_the_role_allows(api: Api) -> None:
    ids = api.seed_pool(1, users=1)
    admin = api.client.get("/api/v1/client/grants", headers=api.headers).json()
    assert admin["role"] == "global_admin"
    assert {"pools:read", "pools:create", "sessions:end", "tenants:create"} <= set(
        admin["permissions"]
    )
    source = api.source_id()
    for role in ("helpdesk", "auditor"):
        api.post(
            "users", {"identity_source_id": source, "username": role, "password": USER_PASSWORD}
        )
        user = api.get(f"users?username={role}")["items"][0]
        api.patch(f"users/{user['id']}", {"role": role})
    helpdesk = api.client.get(
        "/api/v1/client/grants",
        headers={"Authorization": f"Bearer {api.login('helpdesk')['token']}"},
    ).json()["permissions"]
    auditor = api.client.get(
        "/api/v1/client/grants",
        headers={"Authorization": f"Bearer {api.login('auditor')['token']}"},
    ).json()["permissions"]
    assert "sessions:end" in helpdesk and "pools:create" not in helpdesk
    assert "jobs:read" in admin["permissions"] and "jobs:read" not in helpdesk  # global only
    assert "pools:read" in auditor
    assert not [p for p in auditor if not p.endswith(":read")], "an auditor only reads"
    user = api.login("user0")
    plain = api.client.get(
        "/api/v1/client/grants", headers={"Authorization": f"Bearer {user['token']}"}
    ).json()
    assert plain["permissions"] == []
    assert ids["pool"]


def test_pool_history_reads_the_samples_of_the_window(api: Api) -> None:
    pool_id = api.seed_pool(2)["pool"]
    now = utcnow()
    with api.ctx.db.write() as session:
        for minutes_ago, total in ((60 * 30, 9), (90, 1), (30, 2), (5, 3)):
            session.add(
                PoolStat(
                    pool_id=pool_id,
                    at=now - timedelta(minutes=minutes_ago),
                    counts={"total": total, "unassigned": total - 1, "in_flight": 1},
                )
            )
    history = api.get(f"pools/{pool_id}/history?hours=2")
    assert history["pool_name"] == "lab"
    assert [p["total"] for p in history["points"]] == [1, 2, 3]  # oldest first, in the window
    assert history["points"][0]["waiting_users"] == 0  # a count a sample lacks is 0
    assert [p["total"] for p in api.get(f"pools/{pool_id}/history?hours=2&limit=2")["points"]] == [
        2,
        3,
    ]
    assert len(api.get(f"pools/{pool_id}/history?hours=48")["points"]) == 4


def test_pool_history_refuses_in_words(api: Api) -> None:
    pool_id = api.seed_pool(1)["pool"]
    missing = api.get("pools/nope/history", status=404)
    assert missing["detail"] == "pool nope does not exist"
    too_far = api.get(f"pools/{pool_id}/history?hours=100000", status=422)
    assert "hours" in str(too_far)
    add_local_user(api.ctx, "plain", USER_PASSWORD)
    token = api.login("plain")["token"]
    refused = api.client.get(
        f"/api/v1/admin/pools/{pool_id}/history", headers={"Authorization": f"Bearer {token}"}
    )
    assert refused.status_code == 403


def test_the_login_page_learns_the_tenants_sign_in_choices(api: Api) -> None:
    api.post(
        "identity-sources",
        {"name": "corp", "kind": "local", "domain": "corp.example", "position": 5},
    )
    answer = api.client.get("/api/v1/auth/sources")  # no token: a login page asks it
    assert answer.status_code == 200
    sources = answer.json()["sources"]
    assert {"name": "corp", "domain": "corp.example", "kind": "password"} in sources
    assert sources[0]["name"] == "local"
    assert set(sources[0]) == {"name", "domain", "kind"}  # nothing but what a page shows
    assert api.client.get("/api/v1/auth/sources?tenant=nobody").json() == {"sources": []}
    assert api.client.get("/api/v1/auth/sources?tenant=").status_code == 422


def test_the_portal_learns_when_a_plan_acts_on_a_desktop(api: Api) -> None:
    api.seed_pool(1, users=1)
    with_plans(api, power=[{"event": "disconnect", "after_minutes": 20, "action": "suspend"}])
    login = api.login("user0")
    desktop = login["offers"][0]["desktop"]
    headers = {"Authorization": f"Bearer {login['token']}"}

    def plans() -> list[dict[str, Any]]:
        answer = api.client.get("/api/v1/client/plans", headers=headers)
        assert answer.status_code == 200, answer.text
        items: list[dict[str, Any]] = answer.json()["items"]
        return items

    assert plans() == [
        {
            "desktop_id": desktop["id"],
            "desktop_name": desktop["name"],
            "plan": None,
            "trigger": None,
            "action": None,
            "due_at": None,
        }
    ]
    agent = Agent.mint(api, desktop["id"])
    agent.send("login")
    agent.send("disconnect")
    [waiting] = plans()
    assert (waiting["plan"], waiting["trigger"], waiting["action"]) == (
        "power",
        "disconnect",
        "suspend",
    )
    due = datetime.fromisoformat(waiting["due_at"])
    assert timedelta(minutes=19) < due - utcnow() <= timedelta(minutes=20)
    agent.send("reconnect")
    assert plans()[0]["action"] is None  # connecting again cancelled it
    add_local_user(api.ctx, "other", USER_PASSWORD)
    other = api.login("other")["token"]
    seen = api.client.get("/api/v1/client/plans", headers={"Authorization": f"Bearer {other}"})
    assert seen.json() == {"items": []}  # nobody sees another user's desktops

"""What the portal and the console added to the API: a user's power buttons where the
policy allows them (on a cloudsim desktop), a helpdesk's message, lock and log-off sent
through the desktop's agent, and the pool preview before a save."""

from __future__ import annotations

from typing import Any

import httpx

from cloudsim.server import CloudSim
from deskbroker.bootstrap import add_local_user
from tests.engine.conftest import openstack_center
from tests.helpers import USER_PASSWORD, Api, scan_now, wait_until


def _status(sim: CloudSim, server_id: str) -> str:
    return str(next(s for s in sim.servers("demo") if s["id"] == server_id)["status"])


def _wait(sim: CloudSim, server_id: str, status: str) -> None:
    wait_until(
        lambda: _status(sim, server_id) == status,
        lambda: f"server {server_id} to be {status}, not {_status(sim, server_id)}",
    )


def _cloud_policy(api: Api, sim: CloudSim, actions: list[str]) -> dict[str, Any]:
    sim.seed_servers(2)
    center = openstack_center(api, sim)
    scan_now(api, center["id"])
    pool = api.post("pools", {"name": "cloud", "center_ids": [center["id"]]})
    policy = api.post(
        "policies",
        {"name": "cloud", "entries": [{"pool_id": pool["id"], "user_power_actions": actions}]},
    )
    api.post(
        "assignment-rules",
        {"identity_source_id": api.source_id(), "name": "everyone", "policy_id": policy["id"]},
    )
    return policy


def _as(api: Api, token: str, method: str, path: str, body: Any = None) -> httpx.Response:
    return api.client.request(
        method, f"/api/v1{path}", json=body, headers={"Authorization": f"Bearer {token}"}
    )


def test_a_user_powers_their_desktop_as_far_as_the_policy_allows(api: Api, sim: CloudSim) -> None:
    policy = _cloud_policy(api, sim, ["stop", "start"])
    assert policy["entries"][0]["user_power_actions"] == ["stop", "start"]
    add_local_user(api.ctx, "alice", USER_PASSWORD)
    add_local_user(api.ctx, "bob", USER_PASSWORD)
    alice = api.login("alice")
    bob = api.login("bob")
    mine = alice["offers"][0]["desktop"]
    theirs = bob["offers"][0]["desktop"]
    token = alice["token"]

    listed = _as(api, token, "GET", "/client/desktops").json()["desktops"]
    assert [(d["id"], d["power_actions"]) for d in listed] == [(mine["id"], ["start", "stop"])]
    path = f"/client/desktops/{mine['id']}/power"

    refused = _as(api, token, "POST", path, {"action": "reboot"})
    assert refused.status_code == 403, refused.text
    assert refused.json()["detail"] == (
        f"your policy does not let you reboot desktop {mine['name']}; you may start or stop it"
    )
    not_hers = _as(api, token, "POST", f"/client/desktops/{theirs['id']}/power", {"action": "stop"})
    assert not_hers.status_code == 404, not_hers.text
    assert _as(api, token, "POST", path, {"action": "suspend"}).status_code == 422
    started = _as(api, token, "POST", path, {"action": "start"})
    assert started.status_code == 409 and "is running: it cannot start" in started.text

    # Somebody else's session on it: the user may not pull it from under them.
    desktop = api.get(f"desktops/{mine['id']}")
    agent = api.post(f"desktops/{mine['id']}/agent-token", {})["token"]
    reported = _as(api, agent, "POST", "/agent/events", {"event": "login", "user": "bob"})
    assert reported.status_code < 300, reported.text
    busy = _as(api, token, "POST", path, {"action": "stop"})
    assert busy.status_code == 409, busy.text
    assert busy.json()["detail"] == (
        f"desktop {mine['name']} has a session of bob in use; ask your helpdesk to stop it"
    )
    _as(api, agent, "POST", "/agent/events", {"event": "logout", "user": "bob"})

    # Her own session does not hold her back: she asked.
    _as(api, agent, "POST", "/agent/events", {"event": "login", "user": "alice"})
    stopped = _as(api, token, "POST", path, {"action": "stop"})
    assert stopped.status_code == 200, stopped.text
    assert stopped.json() == {
        "desktop_id": mine["id"],
        "action": "stop",
        "was": "running",
        "power_state": "stopped",
    }
    _wait(sim, desktop["external_id"], "SHUTOFF")
    again = _as(api, token, "POST", path, {"action": "start"})
    assert again.status_code == 200 and again.json()["power_state"] == "running"
    _wait(sim, desktop["external_id"], "ACTIVE")

    events = api.get(f"events?desktop_id={mine['id']}&kind=user.power")["items"]
    assert sorted(e["detail"]["action"] for e in events) == ["start", "stop"]
    assert {e["actor"] for e in events} == {"alice"}

    # The policy takes the buttons back: the list and the API agree at once.
    api.patch(f"policies/{policy['id']}", {"entries": [{"pool_id": mine["pool_id"]}]})
    relisted = _as(api, token, "GET", "/client/desktops").json()["desktops"]
    assert relisted[0]["power_actions"] == []
    gone = _as(api, token, "POST", path, {"action": "stop"})
    assert gone.status_code == 403
    assert gone.json()["detail"].endswith("you may not power it")


def test_a_helpdesk_messages_locks_and_logs_off_through_the_agent(api: Api) -> None:
    api.seed_pool(1, users=1)
    held = api.login("user0")["offers"][0]["desktop"]
    add_local_user(api.ctx, "hana", USER_PASSWORD, role="helpdesk")
    add_local_user(api.ctx, "audrey", USER_PASSWORD, role="auditor")
    helpdesk = Api(api.client, api.ctx, api.login("hana")["token"])
    auditor = Api(api.client, api.ctx, api.login("audrey")["token"])
    agent = api.post(f"desktops/{held['id']}/agent-token", {})["token"]
    _as(
        api,
        agent,
        "POST",
        "/agent/events",
        {"event": "login", "user": "user0", "session_key": "k1"},
    )
    [session] = helpdesk.get(f"sessions?desktop_id={held['id']}")["items"]
    base = f"sessions/{session['id']}"

    said = helpdesk.post(f"{base}/message", {"message": "Rebooting at noon"}, status=202)
    assert said["kind"] == "message" and said["username"] == "user0"
    assert (
        said["message"] == f"the message is shown when the agent of {held['name']} next checks in"
    )
    locked = helpdesk.post(f"{base}/lock", {}, status=202)
    assert locked["kind"] == "lock"
    auditor.post(f"{base}/logoff", {}, status=403)
    auditor.post(f"{base}/message", {"message": "hi"}, status=403)
    helpdesk.post(f"{base}/message", {"message": ""}, status=422)
    helpdesk.post("sessions/no-such-session/lock", {}, status=404)
    off = helpdesk.post(f"{base}/logoff", {}, status=202)

    # The agent pulls the three orders with its heartbeat, in the order they were sent.
    beat = _as(api, agent, "POST", "/agent/heartbeat", {})
    assert beat.status_code == 200, beat.text
    actions = beat.json()["actions"]
    assert [(a["kind"], a["session_key"]) for a in actions] == [
        ("message", "k1"),
        ("lock", "k1"),
        ("logoff", "k1"),
    ]
    assert actions[0]["message"] == "Rebooting at noon"
    assert actions[2]["id"] == off["action_id"]
    # It carries them out and says so; the logout it reports ends the session.
    done = [{"id": a["id"], "ok": True} for a in actions]
    assert _as(api, agent, "POST", "/agent/heartbeat", {"done": done}).json()["actions"] == []
    _as(
        api,
        agent,
        "POST",
        "/agent/events",
        {"event": "logout", "user": "user0", "session_key": "k1"},
    )
    [ended] = helpdesk.get(f"sessions?desktop_id={held['id']}")["items"]
    assert ended["state"] == "logged_out"
    late = helpdesk.post(f"{base}/lock", {}, status=409)
    assert late["detail"] == f"session {session['id']} of user0 has already ended"

    kinds = [e["kind"] for e in api.get(f"events?desktop_id={held['id']}")["items"]]
    for kind in ("admin.session_message", "admin.session_lock", "admin.session_logoff"):
        assert kinds.count(kind) == 1, kinds


def test_the_pool_preview_shows_what_a_definition_would_take_and_writes_nothing(
    api: Api,
) -> None:
    ids = api.seed_pool(3, users=1)
    holder = api.login("user0")["offers"][0]["desktop"]
    events_before = api.get("events?limit=1")["total"]
    pools_before = api.get("pools")["total"]

    seen = api.post(
        "pools/preview",
        {
            "name": "second",
            "center_ids": [ids["center"]],
            "filters": [{"attribute": "name", "op": "not_equals", "value": "lab-002"}],
        },
        status=200,
    )
    assert seen["total"] == 2 and seen["assigned"] == 1 and seen["free"] == 1
    assert [d["name"] for d in seen["desktops"]] == ["lab-000", "lab-001"]
    assert seen["users"] == ["user0"]
    assert {d["name"]: d["user"] for d in seen["desktops"]}[holder["name"]] == "user0"
    assert all(d["other_pools"] == ["lab"] for d in seen["desktops"]) and seen["shared"] == 2
    assert seen["to_create"] == 0 and seen["max_total"] is None
    assert seen["summary"].startswith(
        "This pool would take 2 desktops: 1 assigned (to user0), 1 free."
    )
    assert "It builds nothing" in seen["summary"]

    # With limits: 2 free of the 3 to keep, and room for 1 more under 4.
    limited = api.post(
        "pools/preview",
        {
            "name": "second",
            "center_ids": [ids["center"]],
            "provisioning": {"enabled": True, "min_unassigned": 3, "max_total": 4},
        },
        status=200,
    )
    assert (limited["total"], limited["free"], limited["to_create"]) == (3, 2, 1)
    assert (
        "the broker would build 1 desktop at once (keep 3 free, at most 4 in all)"
        in (limited["summary"])
    )

    # An edit: the pool's own definition is replaced, so it shares with nobody.
    edit = api.post(
        "pools/preview",
        {"pool_id": ids["pool"], "name": "lab", "desktop_ids": [holder["id"]]},
        status=200,
    )
    assert [d["name"] for d in edit["desktops"]] == [holder["name"]] and edit["shared"] == 0

    # Refused as saving would refuse it; and nothing was written.
    bad = api.post("pools/preview", {"name": "x", "center_ids": ["nope"]}, status=422)
    saved = api.post("pools", {"name": "x", "center_ids": ["nope"]}, status=422)
    assert bad["detail"] == saved["detail"]
    api.post("pools/preview", {"name": "x", "pool_id": "nope"}, status=404)
    assert api.get("events?limit=1")["total"] == events_before
    assert api.get("pools")["total"] == pools_before

    # An auditor may look (it only reads); a plain user may not. A pool without any
    # criterion takes every desktop of the tenant: the preview says so before it happens.
    add_local_user(api.ctx, "audrey", USER_PASSWORD, role="auditor")
    auditor = Api(api.client, api.ctx, api.login("audrey")["token"])
    assert auditor.post("pools/preview", {"name": "y"}, status=200)["total"] == 3
    user = Api(api.client, api.ctx, api.login("user0")["token"])
    user.post("pools/preview", {"name": "y"}, status=403)

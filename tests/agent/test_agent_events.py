"""Malformed, replayed and out-of-order agent events: a 4xx, or ignored with a reason,
never a wrong session state."""

from __future__ import annotations

import json
import logging

import pytest

from tests.desktop_agent import Agent, assigned_desktop, events_of
from tests.helpers import Api


def _agent(api: Api) -> tuple[str, Agent]:
    api.seed_pool(1, users=1)
    desktop = assigned_desktop(api, "user0")
    return desktop, Agent.mint(api, desktop)


def _state(api: Api, desktop: str) -> str:
    return str(api.get(f"sessions?desktop_id={desktop}")["items"][0]["state"])


def test_a_late_or_replayed_event_is_ignored_with_its_reason(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    desktop, agent = _agent(api)
    agent.send("login", seq=1, key="1-a")
    agent.send("disconnect", seq=2, key="2-a")
    agent.send("reconnect", seq=4, key="4-a")
    # Event 3 (a disconnect) arrives after event 4: applying it would leave the session
    # disconnected while the user is connected.
    with caplog.at_level(logging.INFO, logger="deskbroker.sessions"):
        late = agent.send("disconnect", seq=3, key="3-a")
    assert late["changed"] is False
    assert "event 3 (disconnect of user0) is not after event 4" in late["ignored"]
    assert "event 3" in caplog.text
    assert _state(api, desktop) == "connected"
    # The reply to event 4 was lost and the agent sends it again: counted once.
    replay = agent.send("reconnect", seq=4, key="4-a")
    assert replay["ignored"] and replay["changed"] is False
    kinds = [e["kind"] for e in events_of(api, desktop, "session.")]
    assert kinds == ["session.login", "session.disconnect", "session.reconnect"]


def test_malformed_events_are_422_and_change_nothing(api: Api) -> None:
    desktop, agent = _agent(api)
    agent.send("login", seq=1)
    for bad in (
        {"seq": 0},
        {"seq": -4},
        {"seq": "three"},
        {"seq": 2**63},
        {"key": "k" * 101},
        {"seq": 2, "user": ""},
    ):
        problem = agent.send("lock", status=422, **bad)
        assert problem["status"] == 422 and problem["detail"], problem
    assert _state(api, desktop) == "logged_in"
    # An event that cannot follow is a 409; a later one still can.
    agent.send("logout", seq=2)
    assert "must follow a login" in agent.send("unlock", seq=3, status=409)["detail"]
    assert agent.send("login", seq=4)["state"] == "logged_in"


def test_a_heartbeat_body_is_schema_checked(api: Api) -> None:
    desktop, agent = _agent(api)
    auth = {"Authorization": f"Bearer {agent.token}"}
    for bad in (
        {"colour": "red"},
        {"queued": -1},
        {"done": [{"id": "x"}]},
        {"identity": {"addresses": ["not-an-address"]}},
        {"identity": {"public_ip": "10.0.0.300"}},
    ):
        answer = api.client.post("/api/v1/agent/heartbeat", json=bad, headers=auth)
        assert answer.status_code == 422, (bad, answer.text)
    good = api.client.post(
        "/api/v1/agent/heartbeat",
        json={"identity": {"instance": "i-1", "addresses": ["10.0.0.5"]}, "queued": 0},
        headers=auth,
    )
    assert good.status_code == 200 and good.json()["desktop_id"] == desktop
    assert good.json()["assigned_user"] == "user0"


@pytest.mark.parametrize("policy", ["record", "assign", "flag"])
def test_a_rogue_login_is_recorded_assigned_or_flagged(api: Api, policy: str) -> None:
    api.ctx.settings.rogue_users = policy  # type: ignore[assignment]
    api.seed_pool(2, users=2)
    desktops = {d["name"]: d["id"] for d in api.get("desktops")["items"]}
    free = desktops["lab-001"]
    agent = Agent.mint(api, free)
    # user1 logs into a desktop nobody handed them (the broker never assigned it).
    agent.send("login", user="user1", seq=1)
    [rogue] = events_of(api, free, "session.rogue")
    user1 = api.get("users?username=user1")["items"][0]["id"]
    assert rogue["detail"]["user"] == "user1" and rogue["user_id"] == user1
    row = api.get(f"desktops/{free}")
    if policy == "assign":
        assert rogue["detail"]["outcome"] == "assigned"
        assert row["assigned_user_id"] == user1 and row["availability"] == "available"
    elif policy == "flag":
        assert rogue["detail"]["outcome"] == "flagged"
        assert row["assigned_user_id"] is None and row["availability"] == "unavailable"
    else:
        assert rogue["detail"]["outcome"] == "recorded"
        assert row["assigned_user_id"] is None and row["availability"] == "available"
    # The desktop's own holder logging in is no rogue.
    held = assigned_desktop(api, "user0")
    Agent.mint(api, held).send("login", user="user0", seq=1)
    assert events_of(api, held, "session.rogue") == []


def test_each_policy_says_what_a_rogue_login_leads_to(api: Api) -> None:
    api.ctx.settings.rogue_users = "record"
    api.seed_pool(3, users=3)
    desktops = {d["name"]: d["id"] for d in api.get("desktops")["items"]}
    users = {u["username"]: u["id"] for u in api.get("users")["items"]}
    pool, policy = api.ids["pool"], api.ids["policy"]
    api.patch(f"policies/{policy}", {"entries": [{"pool_id": pool, "rogue_users": "assign"}]})
    assert api.get(f"policies/{policy}")["entries"][0]["rogue_users"] == "assign"
    bad = api.patch(
        f"policies/{policy}", {"entries": [{"pool_id": pool, "rogue_users": "banish"}]}, 422
    )
    assert "rogue_users" in json.dumps(bad)
    # The broker says record; the only policy offering the pool says assign.
    Agent.mint(api, desktops["lab-001"]).send("login", user="user1", seq=1)
    [rogue] = events_of(api, desktops["lab-001"], "session.rogue")
    assert rogue["detail"]["outcome"] == "assigned"
    assert api.get(f"desktops/{desktops['lab-001']}")["assigned_user_id"] == users["user1"]
    # A second policy offers the pool and says flag: the stricter answer wins.
    api.post("policies", {"name": "strict", "entries": [{"pool_id": pool, "rogue_users": "flag"}]})
    Agent.mint(api, desktops["lab-002"]).send("login", user="user2", seq=1)
    [rogue] = events_of(api, desktops["lab-002"], "session.rogue")
    assert rogue["detail"]["outcome"] == "flagged"
    row = api.get(f"desktops/{desktops['lab-002']}")
    assert row["assigned_user_id"] is None and row["availability"] == "unavailable"

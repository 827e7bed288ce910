"""A pool's desktop upkeep against cloudsim: a released desktop rebuilt before anyone
else gets it, and a daily refresh or reboot of the free desktops, never one in use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cloudsim.server import CloudSim
from deskbroker.bootstrap import add_local_user
from deskbroker.engine.runner import Engine
from tests.desktop_agent import Agent, assigned_desktop
from tests.engine.conftest import openstack_center, provisioning_pool, run_until
from tests.helpers import USER_PASSWORD, Api


def _pool(api: Api, sim: CloudSim, engine: Engine, size: int) -> tuple[str, dict[str, str]]:
    """A pooled pool of ``size`` built desktops; returns it and each desktop's server."""
    center = openstack_center(api, sim)
    pool = provisioning_pool(api, center["id"], n=size, m=size)["id"]
    policy = api.post(
        "policies", {"name": "auto", "entries": [{"pool_id": pool, "assignment": "pooled"}]}
    )
    api.post("assignment-rules", {"identity_source_id": api.source_id(), "policy_id": policy["id"]})
    run_until(engine, lambda: api.get(f"pools/{pool}/status")["counts"]["available"] == size)
    servers = {s["name"]: s["id"] for s in sim.servers("demo")}
    members = api.get(f"pools/{pool}/members")["items"]
    return pool, {m["id"]: servers[m["name"]] for m in members}


def _actions(sim: CloudSim, server_id: str) -> int:
    return sim.request_count(method="POST", path=rf"/servers/{server_id}/action$", status=202)


def _kinds(api: Api, pool: str) -> list[str]:
    return [e["kind"] for e in api.get(f"events?pool_id={pool}&limit=500")["items"]]


def _session(api: Api, user: str) -> Agent:
    add_local_user(api.ctx, user, USER_PASSWORD)
    agent = Agent.mint(api, assigned_desktop(api, user))
    agent.send("login", user=user)
    return agent


def test_a_released_desktop_is_rebuilt_before_anyone_else_gets_it(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    pool, server_of = _pool(api, sim, engine, 2)
    settings = api.client.put(
        f"/api/v1/admin/pools/{pool}/upkeep",
        json={"refresh_on_release": True},
        headers=api.headers,
    )
    assert settings.status_code == 200, settings.text
    assert settings.json()["refresh_on_release"] is True
    alice = _session(api, "alice")
    used = alice.desktop_id
    other = next(d for d in server_of if d != used)
    assert _actions(sim, server_of[used]) == 0

    alice.send("logout", user="alice")  # pooled: released at logout, by the engine's timer
    run_until(engine, lambda: _actions(sim, server_of[used]) == 1, what="the rebuild asked")
    # Out of the claim while it is rebuilt: the next user gets the other desktop.
    assert api.get(f"desktops/{used}")["availability"] == "unavailable"
    bob = _session(api, "bob")
    assert bob.desktop_id == other
    run_until(
        engine,
        lambda: api.get(f"desktops/{used}")["availability"] == "available",
        what="the rebuilt desktop back",
    )
    assert api.get(f"desktops/{used}")["power_state"] == "running"
    assert _actions(sim, server_of[other]) == 0  # bob's, in use, was never touched
    assert "release.rebuild" in _kinds(api, pool)
    # The next one in gets the fresh desktop.
    assert _session(api, "carol").desktop_id == used


@pytest.mark.parametrize(
    ("action", "event"), [("refresh", "refresh.rebuild"), ("reboot", "desktop.reboot")]
)
def test_the_daily_window_refreshes_or_reboots_free_desktops_once_skipping_those_in_use(
    api: Api, sim: CloudSim, engine: Engine, action: str, event: str
) -> None:
    pool, server_of = _pool(api, sim, engine, 4)
    held = _session(api, "dana").desktop_id
    opened = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%H:%M")
    body: dict[str, Any] = {
        "scheduled_action": action,
        "scheduled_at": opened,
        "window_minutes": 30,
        "timezone": "UTC",
    }
    answer = api.client.put(f"/api/v1/admin/pools/{pool}/upkeep", json=body, headers=api.headers)
    assert answer.status_code == 200, answer.text
    free = [d for d in server_of if d != held]

    def all_back() -> bool:
        desktops = [api.get(f"desktops/{d}") for d in free]
        return all(d["availability"] == "available" for d in desktops) and all(
            _actions(sim, server_of[d]) == 1 for d in free
        )

    run_until(engine, all_back, what=f"the {action} of the free desktops")
    assert _actions(sim, server_of[held]) == 0
    assert api.get("sessions?state=logged_in")["items"][0]["desktop_id"] == held
    for _ in range(10):  # once a day: the rest of the window asks nothing more
        engine.run_once()
    assert [_actions(sim, server_of[d]) for d in free] == [1, 1, 1]
    kinds = _kinds(api, pool)
    assert kinds.count(f"upkeep.{action}") == 1 and kinds.count(event) == 3
    today = datetime.now(UTC) - timedelta(minutes=1)
    assert api.get(f"pools/{pool}/upkeep")["last_scheduled_on"] == today.date().isoformat()


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"scheduled_at": "25:00"}, "scheduled_at"),
        ({"scheduled_action": "melt"}, "scheduled_action"),
        ({"window_minutes": 0}, "window_minutes"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_upkeep_settings_are_refused_in_words(
    api: Api, body: dict[str, Any], says: str
) -> None:
    pool = api.post("pools", {"name": "plain"})["id"]
    answer = api.client.put(f"/api/v1/admin/pools/{pool}/upkeep", json=body, headers=api.headers)
    assert answer.status_code == 422, answer.text
    assert says in answer.json()["detail"]
    assert api.get(f"pools/{pool}/upkeep")["scheduled_action"] == "none"

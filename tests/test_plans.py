"""Power and release plans acting on agent-reported sessions, and start on connect.

Timers are fired as the engine runner fires them (claim by lease, then
``engine.plans.execute_timer``) with an explicit ``now``: nothing sleeps. Power actions
run against cloudsim, a real-HTTP OpenStack simulator, through the OpenStack center.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloudsim.server import CloudSim
from deskbroker.bootstrap import add_local_user
from deskbroker.config import Settings
from deskbroker.domain import plans
from deskbroker.domain.plans import (
    FireFacts,
    Outcome,
    PendingTimer,
    PlanAction,
    PlanKind,
    PlanRule,
    Trigger,
)
from deskbroker.domain.states import PowerState, SessionState
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.plans import execute_timer
from deskbroker.services.context import BrokerContext
from deskbroker.store import leases
from deskbroker.store.tables import Timer
from tests.desktop_agent import (
    OWNER,
    Agent,
    assigned_desktop,
    events_of,
    fire_due,
    timers_of,
    with_plans,
)
from tests.helpers import USER_PASSWORD, Api, run_queued_scan, scan_now

S = SessionState


def _now() -> datetime:
    return datetime.now(UTC)


# --- pure rules ------------------------------------------------------------------------
RULES = (
    PlanRule(PlanKind.POWER, Trigger.DISCONNECT, timedelta(minutes=30), PlanAction.SUSPEND),
    PlanRule(PlanKind.POWER, Trigger.IDLE, timedelta(minutes=60), PlanAction.SHUTDOWN),
    PlanRule(PlanKind.RELEASE, Trigger.LOGOUT, timedelta(0), PlanAction.RELEASE),
)


def test_rules_parse_leaving_out_what_does_nothing() -> None:
    parsed = plans.parse_rules(
        PlanKind.POWER,
        [
            {"event": "disconnect", "after_minutes": 5, "action": "suspend"},
            {"event": "logout", "after_minutes": 0, "action": "nothing"},
            {"event": "logout", "after_minutes": 0, "action": "release"},  # not a power action
        ],
    )
    assert parsed == (
        PlanRule(PlanKind.POWER, Trigger.DISCONNECT, timedelta(minutes=5), PlanAction.SUSPEND),
    )
    assert plans.parse_rules(PlanKind.RELEASE, [{"event": "lock", "action": "release"}]) == ()
    # Release on idle and the session time limit, each with its warning (never before the
    # trigger itself).
    assert plans.parse_rules(
        PlanKind.RELEASE,
        [
            {"event": "idle", "after_minutes": 30, "action": "release", "warn_minutes": 5},
            {"event": "session_limit", "after_minutes": 2, "action": "release", "warn_minutes": 9},
        ],
    ) == (
        PlanRule(
            PlanKind.RELEASE,
            Trigger.IDLE,
            timedelta(minutes=30),
            PlanAction.RELEASE,
            timedelta(minutes=5),
        ),
        PlanRule(
            PlanKind.RELEASE,
            Trigger.SESSION_LIMIT,
            timedelta(minutes=2),
            PlanAction.RELEASE,
            timedelta(minutes=2),
        ),
    )


def test_session_changes_set_and_cancel_timers() -> None:
    at = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    gone = plans.on_session_change(
        session_id="s1", previous=S.CONNECTED, new=S.DISCONNECTED, at=at, rules=RULES, pending=()
    )
    assert [(t.action, t.due_at) for t in gone.add] == [
        (PlanAction.SUSPEND, at + timedelta(minutes=30))
    ]
    pending = [PendingTimer("t1", "s1", "power", "disconnect", "suspend")]
    # Going idle while away neither resets nor cancels the disconnect clock.
    idle = plans.on_session_change(
        session_id="s1", previous=S.DISCONNECTED, new=S.IDLE, at=at, rules=RULES, pending=pending
    )
    assert idle.cancel == () and [t.action for t in idle.add] == [PlanAction.SHUTDOWN]
    back = plans.on_session_change(
        session_id="s1",
        previous=S.DISCONNECTED,
        new=S.CONNECTED,
        at=at,
        rules=RULES,
        pending=pending,
    )
    assert back.cancel == ("t1",) and back.add == ()
    # Another session's reconnect is no reason to cancel this one's timer.
    other = plans.on_session_change(
        session_id="s2",
        previous=S.DISCONNECTED,
        new=S.CONNECTED,
        at=at,
        rules=RULES,
        pending=pending,
    )
    assert other.cancel == ()
    out = plans.on_session_change(
        session_id="s1",
        previous=S.DISCONNECTED,
        new=S.LOGGED_OUT,
        at=at,
        rules=RULES,
        pending=pending,
    )
    assert out.cancel == ("t1",) and [t.action for t in out.add] == [PlanAction.RELEASE]
    login = plans.on_session_change(
        session_id="s3",
        previous=None,
        new=S.LOGGED_IN,
        at=at,
        rules=RULES,
        pending=[PendingTimer("t2", "s1", "release", "logout", "release")],
    )
    assert login.cancel == ("t2",)


def _facts(**changes: Any) -> FireFacts:
    base: dict[str, Any] = dict(
        trigger=Trigger.DISCONNECT,
        action=PlanAction.SUSPEND,
        trigger_state=S.DISCONNECTED,
        other_states=(),
        assigned=True,
        reassigned=False,
        power_state=PowerState.RUNNING,
        deletable=False,
        can_power=True,
        can_terminate=True,
    )
    base.update(changes)
    return FireFacts(**base)


@pytest.mark.parametrize(
    ("changes", "outcome", "words"),
    [
        ({}, Outcome.RUN, ""),
        ({"trigger_state": S.CONNECTED}, Outcome.CANCEL, "connected again"),
        ({"trigger_state": None}, Outcome.CANCEL, "gone"),
        ({"other_states": (S.IDLE, S.LOCKED)}, Outcome.SKIP, "locked"),
        ({"other_states": (S.DISCONNECTED,)}, Outcome.RUN, ""),
        ({"can_power": False}, Outcome.SKIP, "cannot power"),
        ({"power_state": PowerState.SUSPENDED}, Outcome.SKIP, "suspended"),
        ({"reassigned": True}, Outcome.CANCEL, "assigned again"),
        ({"action": PlanAction.RELEASE, "assigned": False}, Outcome.SKIP, "not assigned"),
        ({"action": PlanAction.TERMINATE, "deletable": True}, Outcome.RUN, ""),
    ],
)
def test_a_due_timer_is_judged_on_the_facts_at_fire_time(
    changes: dict[str, Any], outcome: Outcome, words: str
) -> None:
    verdict = plans.judge(_facts(**changes))
    assert verdict.outcome is outcome
    assert words in verdict.reason


def test_terminating_a_desktop_that_is_not_deletable_releases_it() -> None:
    verdict = plans.judge(_facts(action=PlanAction.TERMINATE, deletable=False))
    assert (verdict.outcome, verdict.action) == (Outcome.RUN, PlanAction.RELEASE)
    assert "not deletable" in verdict.reason


# --- the static center: guards and scheduling, actions it cannot do are skipped ------------
def test_a_plan_on_a_center_that_cannot_power_is_recorded_as_skipped(api: Api) -> None:
    api.seed_pool(1, users=1)
    with_plans(api, power=[{"event": "disconnect", "after_minutes": 0, "action": "suspend"}])
    desktop = assigned_desktop(api, "user0")
    agent = Agent.mint(api, desktop)
    agent.send("login")
    scheduled = agent.send("disconnect")["timers_set"]
    assert [(t["plan"], t["trigger"], t["action"]) for t in scheduled] == [
        ("power", "disconnect", "suspend")
    ]
    assert fire_due(api.ctx, DriverCache(api.ctx), _now()) == 1
    [skipped] = events_of(api, desktop)
    assert skipped["kind"] == "plan.skipped"
    assert "cannot power" in skipped["detail"]["reason"]
    assert timers_of(api, desktop) == []
    assert api.get(f"desktops/{desktop}")["power_state"] == "running"


def test_reconnecting_cancels_the_pending_action(api: Api) -> None:
    api.seed_pool(1, users=1)
    with_plans(
        api,
        power=[
            {"event": "disconnect", "after_minutes": 30, "action": "suspend"},
            {"event": "idle", "after_minutes": 60, "action": "shutdown"},
        ],
    )
    desktop = assigned_desktop(api, "user0")
    agent = Agent.mint(api, desktop)
    start = _now()
    agent.send("login", at=start)
    [timer] = agent.send("disconnect", at=start)["timers_set"]
    assert datetime.fromisoformat(timer["due_at"]) == start + timedelta(minutes=30)
    assert len(timers_of(api, desktop)) == 1
    assert fire_due(api.ctx, DriverCache(api.ctx), start + timedelta(minutes=29)) == 0
    assert agent.send("reconnect")["timers_cancelled"] == 1
    assert timers_of(api, desktop) == []
    # Idle, then active again: the same for the idle rule.
    assert len(agent.send("idle")["timers_set"]) == 1
    assert agent.send("active")["timers_cancelled"] == 1
    assert fire_due(api.ctx, DriverCache(api.ctx), start + timedelta(days=1)) == 0
    assert events_of(api, desktop) == []


def test_a_power_plan_warns_the_user_first_and_coming_back_cancels_it(api: Api) -> None:
    api.seed_pool(1, users=1)
    rule = {"event": "idle", "after_minutes": 30, "action": "suspend", "warn_minutes": 5}
    with_plans(api, power=[rule])
    assert api.get(f"power-plans/{api.ids['power_plan']}")["rules"] == [rule]
    too_early = {**rule, "warn_minutes": 0}
    api.post("power-plans", {"name": "bad", "rules": [too_early]}, 422)
    desktop = assigned_desktop(api, "user0")
    agent = Agent.mint(api, desktop)
    start = _now()
    agent.send("login", at=start)
    timers = agent.send("idle", at=start)["timers_set"]
    due = {t["action"]: datetime.fromisoformat(t["due_at"]) for t in timers}
    assert due == {
        "suspend": start + timedelta(minutes=30),
        "warn": start + timedelta(minutes=25),
    }
    drivers = DriverCache(api.ctx)
    assert fire_due(api.ctx, drivers, start + timedelta(minutes=26)) == 1
    [warned] = events_of(api, desktop)
    assert warned["kind"] == "plan.warn"
    message = warned["detail"]["message"]
    assert "in 5 minutes" in message and "will be suspended" in message
    assert "released" not in message
    # The message waits for the agent's next heartbeat.
    beat = api.client.post(
        "/api/v1/agent/heartbeat", json={}, headers={"Authorization": f"Bearer {agent.token}"}
    ).json()
    assert [(a["kind"], a["message"]) for a in beat["actions"]] == [("message", message)]
    # The user comes back within the grace period: the suspend is off.
    assert agent.send("active")["timers_cancelled"] == 1
    assert fire_due(api.ctx, drivers, start + timedelta(minutes=31)) == 0
    assert [e["kind"] for e in events_of(api, desktop)] == ["plan.warn"]


def test_release_on_logout_hands_the_desktop_to_the_queue(api: Api) -> None:
    api.seed_pool(1, users=2)
    with_plans(api, release=[{"event": "logout", "after_minutes": 5, "action": "release"}])
    desktop = assigned_desktop(api, "user0")
    waiting = api.login("user1")["offers"][0]
    assert waiting["status"] == "queued" and waiting["position"] == 1
    agent = Agent.mint(api, desktop)
    start = _now()
    agent.send("login", at=start)
    agent.send("logout", at=start)
    assert fire_due(api.ctx, DriverCache(api.ctx), start + timedelta(minutes=4)) == 0
    assert fire_due(api.ctx, DriverCache(api.ctx), start + timedelta(minutes=5)) == 1
    user1 = api.get("users?username=user1")["items"][0]["id"]
    [holder] = api.get("assignments")["items"]
    assert (holder["desktop_id"], holder["user_id"]) == (desktop, user1)
    assert [e["kind"] for e in events_of(api, desktop)] == ["plan.release"]
    kinds = [e["kind"] for e in api.get(f"events?desktop_id={desktop}")["items"]]
    assert "release" in kinds and "assign" in kinds


def test_a_new_login_cancels_the_after_logout_timer(api: Api) -> None:
    api.seed_pool(1, users=1)
    with_plans(api, release=[{"event": "logout", "after_minutes": 10, "action": "release"}])
    desktop = assigned_desktop(api, "user0")
    agent = Agent.mint(api, desktop)
    agent.send("login")
    assert len(agent.send("logout")["timers_set"]) == 1
    assert agent.send("login")["timers_cancelled"] == 1
    assert fire_due(api.ctx, DriverCache(api.ctx), _now() + timedelta(hours=1)) == 0
    assert len(api.get("assignments")["items"]) == 1


def test_no_plan_acts_while_another_session_is_in_use(api: Api) -> None:
    api.seed_pool(1, users=1)
    with_plans(api, release=[{"event": "logout", "after_minutes": 0, "action": "release"}])
    desktop = assigned_desktop(api, "user0")
    api.patch(f"desktops/{desktop}", {"max_sessions": 2})  # a console next to RDP
    agent = Agent.mint(api, desktop)
    agent.send("login", session_key="rdp-1")
    agent.send("login", user="helpdesk", session_key="console")
    agent.send("lock", user="helpdesk", session_key="console")
    agent.send("logout", session_key="rdp-1")
    assert fire_due(api.ctx, DriverCache(api.ctx), _now() + timedelta(seconds=1)) == 1
    [skipped] = events_of(api, desktop)
    assert skipped["kind"] == "plan.skipped" and "locked" in skipped["detail"]["reason"]
    assert len(api.get("assignments")["items"]) == 1


def test_timers_survive_a_restart(api: Api, settings: Settings) -> None:
    api.seed_pool(1, users=1)
    with_plans(api, release=[{"event": "disconnect", "after_minutes": 15, "action": "release"}])
    desktop = assigned_desktop(api, "user0")
    agent = Agent.mint(api, desktop)
    start = _now()
    agent.send("login", at=start)
    agent.send("disconnect", at=start)
    # Another broker process on the same database: nothing in memory carries over.
    reborn = BrokerContext.from_settings(settings)
    try:
        assert fire_due(reborn, DriverCache(reborn), start + timedelta(minutes=16)) == 1
    finally:
        reborn.db.dispose()
    assert api.get("assignments")["items"] == []
    assert [e["kind"] for e in events_of(api, desktop)] == ["plan.release"]


def test_the_engine_runner_fires_plan_timers(api: Api, ctx: BrokerContext) -> None:
    from deskbroker.engine.runner import Engine

    api.seed_pool(1, users=1)
    with_plans(api, release=[{"event": "logout", "after_minutes": 1, "action": "release"}])
    desktop = assigned_desktop(api, "user0")
    agent = Agent.mint(api, desktop)
    agent.send("login")
    agent.send("logout")
    # Two minutes ahead every short-interval job is due at each tick (scan, provision,
    # rollout, removals, agent watch, webhooks: more than the workers); timers are claimed
    # first, so the plan's timer still gets a worker.
    engine = Engine(ctx, workers=2)
    try:
        # Periodic jobs share the workers; a few ticks get to the timer.
        for _ in range(5):
            engine.run_once(_now() + timedelta(minutes=2))
            if not api.get("assignments")["items"]:
                break
    finally:
        engine.stop()
    assert api.get("assignments")["items"] == []
    assert [e["kind"] for e in events_of(api, desktop)] == ["plan.release"]


def test_terminate_on_a_center_that_cannot_delete_releases_instead(api: Api) -> None:
    api.seed_pool(1, users=1)
    with_plans(api, release=[{"event": "logout", "after_minutes": 0, "action": "terminate"}])
    desktop = assigned_desktop(api, "user0")
    api.patch(f"desktops/{desktop}", {"deletable": True})
    agent = Agent.mint(api, desktop)
    agent.send("login")
    agent.send("logout")
    fire_due(api.ctx, DriverCache(api.ctx), _now() + timedelta(seconds=1))
    [released] = events_of(api, desktop)
    assert released["kind"] == "plan.release"
    assert "cannot delete" in released["detail"]["reason"]
    assert api.get(f"desktops/{desktop}")["power_state"] == "running"


# --- cloudsim: the OpenStack center really suspends, stops, starts and deletes ----------
# Simulated operations take 10 s at real speed; a test finishes them with advance_clock,
# so what the broker sees between two calls does not depend on the machine's speed.
SLOW = 10.0


@pytest.fixture(scope="module")
def sim() -> Iterator[CloudSim]:
    simulator = CloudSim(projects=["demo"], clock_speed=1.0).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def cloud(sim: CloudSim) -> CloudSim:
    sim.reset()
    sim.set_clock_speed(1.0)
    sim.set_timings(
        build=SLOW, start=SLOW, stop=SLOW, suspend=SLOW, resume=SLOW, reboot=SLOW, delete=SLOW
    )
    return sim


def _cloud_pool(
    api: Api, sim: CloudSim, *, machines: int = 1, users: int = 1, **center: Any
) -> None:
    sim.seed_servers(machines, name_prefix="vdi")
    made = api.post(
        "centers",
        {
            "name": "cloud",
            "kind": "openstack",
            "params": {
                "auth_url": sim.auth_url,
                "project_name": "demo",
                "username": "demo",
                "retry_base_s": 0.01,
                **center,
            },
            "secrets": {"password": "password"},
        },
    )
    assert made["status"] == "pending", made["status_message"]
    made = run_queued_scan(api, made["id"])
    assert made["status"] == "ok", made["status_message"]
    pool = api.post("pools", {"name": "cloud", "center_ids": [made["id"]]})
    policy = api.post("policies", {"name": "cloud", "entries": [{"pool_id": pool["id"]}]})
    api.post("assignment-rules", {"identity_source_id": api.source_id(), "policy_id": policy["id"]})
    for i in range(users):
        add_local_user(api.ctx, f"user{i}", USER_PASSWORD)
    api.ids.update(center=made["id"], pool=pool["id"], policy=policy["id"])


def _server(api: Api, sim: CloudSim, desktop: str) -> dict[str, Any]:
    external = api.get(f"desktops/{desktop}")["external_id"]
    return next(s for s in sim.servers("demo") if s["id"] == external)


def _actions(sim: CloudSim) -> int:
    return sim.request_count(method="POST", path=r"/servers/[^/]+/action")


def _connect(client: TestClient, token: str, desktop: str) -> Any:
    return client.post(
        f"/api/v1/client/desktops/{desktop}/connect",
        json={"protocol": "vnc"},
        headers={"Authorization": f"Bearer {token}"},
    )


def test_suspend_after_disconnect_then_start_on_connect(
    api: Api, cloud: CloudSim, client: TestClient
) -> None:
    _cloud_pool(api, cloud)
    with_plans(api, power=[{"event": "disconnect", "after_minutes": 0, "action": "suspend"}])
    token = api.login("user0")["token"]
    desktop = assigned_desktop(api, "user0")
    agent = Agent.mint(api, desktop)
    agent.send("login")
    agent.send("disconnect")
    assert fire_due(api.ctx, DriverCache(api.ctx), _now()) == 1
    assert [e["kind"] for e in events_of(api, desktop)] == ["plan.suspend"]
    assert api.get(f"desktops/{desktop}")["power_state"] == "suspended"
    cloud.advance_clock(SLOW * 2)
    assert _server(api, cloud, desktop)["status"] == "SUSPENDED"

    # The user comes back: the desktop is resumed, the user is told it is starting.
    before = _actions(cloud)
    starting = _connect(client, token, desktop)
    assert starting.status_code == 202, starting.text
    body = starting.json()
    assert body["status"] == "starting" and body["estimate_s"] > 0
    assert "starting" in body["message"]
    assert starting.headers["Retry-After"] == str(body["retry_after_s"]) == "10"
    # A retry while it starts sends no second resume.
    assert _connect(client, token, desktop).status_code == 202
    assert _actions(cloud) - before == 1
    assert cloud.requests(method="POST", path="/action")[-1]["path"].endswith("/action")
    cloud.advance_clock(SLOW * 2)
    ready = _connect(client, token, desktop)
    assert ready.status_code == 200, ready.text
    assert ready.json()["host"] == _server(api, cloud, desktop)["address"]
    assert api.get(f"desktops/{desktop}")["power_state"] == "running"
    assert any(
        e["kind"] == "power.start" and e["detail"]["action"] == "resume"
        for e in api.get(f"events?desktop_id={desktop}")["items"]
    )


def test_a_stopped_desktop_is_started_on_connect(
    api: Api, cloud: CloudSim, client: TestClient
) -> None:
    _cloud_pool(api, cloud)
    token = api.login("user0")["token"]
    desktop = assigned_desktop(api, "user0")
    cloud.set_server_state(_server(api, cloud, desktop)["id"], "SHUTOFF")
    scan_now(api, api.ids["center"])
    assert api.get(f"desktops/{desktop}")["power_state"] == "stopped"
    tokens = cloud.request_count(method="POST", path=r"/v3/auth/tokens$")
    assert _connect(client, token, desktop).status_code == 202
    assert _server(api, cloud, desktop)["task_state"] == "powering-on"
    cloud.advance_clock(SLOW * 2)
    assert _connect(client, token, desktop).status_code == 200
    # Both connects asked the center through the scan's driver: no new Keystone token.
    assert cloud.request_count(method="POST", path=r"/v3/auth/tokens$") == tokens


def test_a_plan_never_stops_a_desktop_in_use(api: Api, cloud: CloudSim) -> None:
    _cloud_pool(api, cloud)
    with_plans(api, power=[{"event": "disconnect", "after_minutes": 0, "action": "shutdown"}])
    desktop = assigned_desktop(api, "user0")
    api.patch(f"desktops/{desktop}", {"max_sessions": 2})
    agent = Agent.mint(api, desktop)
    drivers = DriverCache(api.ctx)
    agent.send("login", session_key="s1")
    agent.send("login", user="helpdesk", session_key="s2")
    agent.send("disconnect", session_key="s1")
    assert fire_due(api.ctx, drivers, _now()) == 1
    [skipped] = events_of(api, desktop)
    assert skipped["kind"] == "plan.skipped" and "logged_in" in skipped["detail"]["reason"]

    # The user reconnects just before the timer fires: it was claimed, but the fire-time
    # check finds its reason gone.
    agent.send("logout", user="helpdesk", session_key="s2")
    agent.send("reconnect", session_key="s1")
    agent.send("disconnect", session_key="s1")
    with api.ctx.db.write() as session:
        [claimed] = leases.claim_due(
            session, Timer, Timer.due_at, owner=OWNER, now=_now(), ttl_s=60
        )
    agent.send("reconnect", session_key="s1")
    execute_timer(api.ctx, drivers, claimed, OWNER, _now())
    cloud.advance_clock(SLOW * 2)
    assert _server(api, cloud, desktop)["status"] == "ACTIVE"
    assert api.get(f"desktops/{desktop}")["power_state"] == "running"
    assert [e["kind"] for e in events_of(api, desktop)] == ["plan.skipped"]
    assert _actions(cloud) == 0


def test_terminate_only_a_deletable_desktop(api: Api, cloud: CloudSim) -> None:
    _cloud_pool(api, cloud)
    with_plans(api, release=[{"event": "logout", "after_minutes": 0, "action": "terminate"}])
    desktop = assigned_desktop(api, "user0")
    agent = Agent.mint(api, desktop)
    drivers = DriverCache(api.ctx)
    agent.send("login")
    agent.send("logout")
    fire_due(api.ctx, drivers, _now() + timedelta(seconds=1))
    [released] = events_of(api, desktop)
    assert released["kind"] == "plan.release" and "not deletable" in released["detail"]["reason"]
    assert api.get("assignments")["items"] == []
    cloud.advance_clock(SLOW * 2)
    assert _server(api, cloud, desktop)["status"] == "ACTIVE"

    api.patch(f"desktops/{desktop}", {"deletable": True})
    assert assigned_desktop(api, "user0") == desktop
    agent = Agent.mint(api, desktop)  # the release revoked the previous holder's token
    agent.send("login")
    agent.send("logout")
    fire_due(api.ctx, drivers, _now() + timedelta(seconds=1))
    assert [e["kind"] for e in events_of(api, desktop)][-1] == "plan.terminate"
    row = api.get(f"desktops/{desktop}")
    assert (row["power_state"], row["availability"], row["assigned_user_id"]) == (
        "deleting",
        "unavailable",
        None,
    )
    cloud.advance_clock(SLOW * 2)
    assert _server(api, cloud, desktop)["status"] == "DELETED"


def test_a_failing_action_is_retried_later_with_its_error(api: Api, cloud: CloudSim) -> None:
    _cloud_pool(api, cloud, retries=0)
    with_plans(api, power=[{"event": "idle", "after_minutes": 0, "action": "reboot"}])
    desktop = assigned_desktop(api, "user0")
    agent = Agent.mint(api, desktop)
    drivers = DriverCache(api.ctx)
    agent.send("login")
    agent.send("idle")
    cloud.inject_fault(500, method="POST", path=r"/action$", times=1)
    now = _now()
    assert fire_due(api.ctx, drivers, now) == 1
    [timer] = timers_of(api, desktop)
    assert timer["failures"] == 1 and timer["last_error"]
    assert datetime.fromisoformat(timer["due_at"]) > now
    assert [e["kind"] for e in events_of(api, desktop)] == ["plan.retry"]
    assert fire_due(api.ctx, drivers, now) == 0  # not due again yet
    assert fire_due(api.ctx, drivers, now + timedelta(minutes=2)) == 1
    assert timers_of(api, desktop) == []
    assert [e["kind"] for e in events_of(api, desktop)] == ["plan.retry", "plan.reboot"]


def test_an_action_that_keeps_failing_is_given_up_and_reported(api: Api, cloud: CloudSim) -> None:
    _cloud_pool(api, cloud, retries=0)
    with_plans(api, power=[{"event": "disconnect", "after_minutes": 0, "action": "suspend"}])
    api.ctx.settings.plan_max_attempts = 2
    desktop = assigned_desktop(api, "user0")
    agent = Agent.mint(api, desktop)
    drivers = DriverCache(api.ctx)
    agent.send("login")
    agent.send("disconnect")
    cloud.inject_fault(503, method="POST", path=r"/action$", times=None)
    now = _now()
    assert fire_due(api.ctx, drivers, now) == 1
    assert fire_due(api.ctx, drivers, now + timedelta(hours=2)) == 1
    assert timers_of(api, desktop) == []
    kinds = [e["kind"] for e in events_of(api, desktop)]
    assert kinds == ["plan.retry", "plan.failed"]
    failed = events_of(api, desktop)[-1]["detail"]
    assert failed["attempts"] == 2 and failed["error"]
    assert api.get(f"desktops/{desktop}")["power_state"] == "running"


def test_a_pooled_desktop_returns_to_its_pool_at_logout(api: Api) -> None:
    """A pooled assignment ends at logout (no release plan needed); a persistent one is
    kept; a release plan that acts on a logout has its own way."""
    api.seed_pool(1, users=2, assignment="pooled")
    desktop = assigned_desktop(api, "user0")
    assert api.get(f"desktops/{desktop}")["assignment_kind"] == "pooled"
    waiting = api.login("user1")["offers"][0]
    assert waiting["status"] == "queued"
    agent = Agent.mint(api, desktop)
    start = _now()
    agent.send("login", at=start)
    assert agent.send("disconnect", at=start)["timers_set"] == []  # only a logout ends it
    agent.send("reconnect", at=start)
    [timer] = agent.send("logout", at=start)["timers_set"]
    assert (timer["plan"], timer["trigger"], timer["action"]) == ("release", "logout", "release")
    assert fire_due(api.ctx, DriverCache(api.ctx), start + timedelta(seconds=1)) == 1
    user1 = api.get("users?username=user1")["items"][0]["id"]
    [holder] = api.get("assignments")["items"]
    assert (holder["desktop_id"], holder["user_id"]) == (desktop, user1)
    assert [e["kind"] for e in events_of(api, desktop)] == ["plan.release"]


def test_a_release_plan_on_logout_overrides_the_pooled_release() -> None:
    ten = [{"event": "logout", "after_minutes": 10, "action": "release"}]
    planned = plans.parse_rules(plans.PlanKind.RELEASE, ten)
    assert plans.with_pooled_release(planned, pooled=True) == list(planned)
    assert plans.with_pooled_release([], pooled=True) == [plans.POOLED_RELEASE]
    assert plans.with_pooled_release([], pooled=False) == []

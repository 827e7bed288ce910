"""End to end: a real agent process inside each Xvnc-backed cloudsim instance.

The agent enrols with the secret the engine put in the instance metadata (found by its
bound source address), sees real VNC viewers come and go in the Xvnc connection log and
the X server's idle time through libXss; nothing here sends a session event itself.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cloudsim.server import CloudSim
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.runner import Engine
from tests.agent.conftest import agent_for, built_pool, xvnc_of
from tests.agent_process import AgentProcess, LiveBroker, Viewer
from tests.desktop_agent import events_of, fire_due, timers_of
from tests.helpers import Api, wait_until
from tests.test_client_api import bearer
from tests.xactivity import KeepActive

POWER = [{"event": "disconnect", "after_minutes": 30, "action": "suspend"}]
# The agent's idle threshold in these tests. The test holds the desktop active with real
# X input (KeepActive) until it wants idle, so the threshold only needs to be longer than
# any stall of that input under load, and short enough not to slow the tests much.
IDLE_S = 6
IDLE = ("session.idle", "session.active")


def _without_idle_periods(kinds: list[str]) -> list[str]:
    """The session events but idle/active, after checking those are well formed.

    Between two other events, idle and active alternate starting with idle (the agent
    reports a change, never the same state twice). A stall of the test's input under
    load may add an idle period; it may not add anything else.
    """
    core: list[str] = []
    run: list[str] = []
    for kind in [*kinds, "end"]:
        if kind in IDLE:
            run.append(kind)
            continue
        expected = [IDLE[i % 2] for i in range(len(run))]
        assert run == expected, f"idle/active out of order after {core[-1:]}: {kinds}"
        run = []
        if kind != "end":
            core.append(kind)
    return core


def _session(api: Api, desktop_id: str) -> dict[str, Any] | None:
    items = api.get(f"sessions?desktop_id={desktop_id}")["items"]
    open_ = [s for s in items if s["ended_at"] is None]
    return open_[0] if open_ else None


def _state_is(api: Api, desktop_id: str, state: str, agent: AgentProcess | None = None) -> Any:
    seen: list[Any] = []

    def check() -> Any:
        row = _session(api, desktop_id)
        seen[:] = [row]
        return row if row is not None and row["state"] == state else None

    def said() -> str:
        # What came instead, and what the agent said meanwhile: a failure under load
        # must tell a slow report from a viewer the agent never saw.
        words = f"the session to be {state}; the last session seen: {seen[:1]}"
        if agent is not None:
            words += f"\n--- the agent's log, its end ---\n{agent.log()[-3000:]}"
        return words

    # The agent is a real process reporting over HTTP: on a loaded machine its report may
    # take a while; the deadline only matters when it never comes.
    return wait_until(check, said, timeout_s=60)


def test_the_agent_reports_real_viewers_and_the_power_plan_follows(
    api: Api,
    sim: CloudSim,
    engine: Engine,
    broker: LiveBroker,
    agents: list[AgentProcess],
    tmp_path: Path,
) -> None:
    plan = api.post("power-plans", {"name": "suspend", "rules": POWER})
    [desktop] = built_pool(api, sim, engine, 1, entry={"power_plan_id": plan["id"]})
    agent = agent_for(tmp_path, sim, broker, desktop, idle_threshold_s=IDLE_S)
    display = f":{xvnc_of(sim, desktop['external_id'])['display']}"
    agents.append(agent.start())
    # Enrolled with no admin action: the secret came through the metadata service,
    # which knew the instance by the agent's source address.
    wait_until(
        lambda: api.get(f"desktops/{desktop['id']}")["agent_state"] == "running",
        "the agent to enrol",
        timeout_s=30,
    )
    [enrolled] = events_of(api, desktop["id"], "agent.enrolled")
    assert enrolled["detail"]["identity"]["instance"] == desktop["external_id"]
    assert desktop["address"] in enrolled["detail"]["identity"]["addresses"]

    # The user logs in through the API and connects with the VNC descriptor.
    login = api.login("user0")
    assert login["offers"][0]["desktop"]["id"] == desktop["id"]
    connect = api.client.post(
        f"/api/v1/client/desktops/{desktop['id']}/connect",
        json={"protocol": "vnc"},
        headers=bearer(login["token"]),
    )
    assert connect.status_code == 200, connect.text
    target = connect.json()
    # The user works at the desktop (real X input) while the viewer connects.
    with KeepActive(display):
        viewer = Viewer(target["host"], int(target["port"]))
        first = _state_is(api, desktop["id"], "logged_in", agent)
    assert first["username"] == "user0" and first["user_id"] is not None
    assert first["protocol"] == "vnc" and first["client_address"] == "127.0.0.1"

    # Nobody touches the desktop: the X server's idle time passes the threshold.
    _state_is(api, desktop["id"], "idle")
    with KeepActive(display):
        viewer.move()  # the user comes back through the viewer
        _state_is(api, desktop["id"], "connected")

        # The viewer leaves: disconnected, and the power plan's timer is set.
        viewer.close()
        _state_is(api, desktop["id"], "disconnected")
        wait_until(lambda: timers_of(api, desktop["id"]), "the plan's timer", timeout_s=10)
        # A reconnect within the window cancels it.
        again = Viewer(target["host"], int(target["port"]))
        _state_is(api, desktop["id"], "connected")
        assert timers_of(api, desktop["id"]) == []
        again.close()
        _state_is(api, desktop["id"], "disconnected")
    [timer] = wait_until(lambda: timers_of(api, desktop["id"]), "the plan's timer", timeout_s=10)
    assert timer["action"] == "suspend"

    # The plan's clock, shortened: the timer fires 30 minutes on.
    later = datetime.now(UTC) + timedelta(minutes=31)
    assert fire_due(api.ctx, DriverCache(api.ctx), later) == 1
    assert [e["kind"] for e in events_of(api, desktop["id"])][-1] == "plan.suspend"
    wait_until(
        lambda: api.get(f"desktops/{desktop['id']}")["power_state"] == "suspended",
        "the desktop to be suspended",
        timeout_s=10,
    )
    # Every session event once, in the order the viewers made them: the idle period the
    # test waited for right after the login and its end...
    kinds = [e["kind"] for e in events_of(api, desktop["id"], "session.")]
    assert kinds[:3] == ["session.login", "session.idle", "session.active"], kinds
    # ...then the viewers' comings and goings (an input stall under load may add idle
    # periods between them, well formed, and nothing else).
    core = _without_idle_periods(kinds)
    assert core[:4] == [
        "session.login",
        "session.disconnect",
        "session.reconnect",
        "session.disconnect",
    ], kinds
    # The suspended desktop's X server goes away: the agent may have reported the logout
    # already (a race with this check), and nothing else.
    assert core[4:] in ([], ["session.logout"]), kinds


# The issue asks for a 60 s outage, and so does the test: long enough for the agent's
# back-off to reach its ceiling and for its token to be checked after the gap.
# DESKBROKER_TEST_OUTAGE_S shortens it on a developer's machine.
OUTAGE_S = float(os.environ.get("DESKBROKER_TEST_OUTAGE_S", "60"))


def _queued_on_disk(agent: AgentProcess) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((agent.state / "queue").glob("*.json"))]


def test_the_broker_down_the_agent_queues_and_replays_every_event_once(
    api: Api,
    sim: CloudSim,
    engine: Engine,
    broker: LiveBroker,
    agents: list[AgentProcess],
    tmp_path: Path,
) -> None:
    [desktop] = built_pool(api, sim, engine, 1)
    agent = agent_for(tmp_path, sim, broker, desktop, idle_threshold_s=3600)
    agents.append(agent.start())
    wait_until(
        lambda: api.get(f"desktops/{desktop['id']}")["agent_state"] == "running",
        "the agent to enrol",
        timeout_s=30,
    )
    api.login("user0")
    viewer = Viewer(desktop["address"])
    _state_is(api, desktop["id"], "logged_in", agent)

    broker.stop()
    down_at = time.monotonic()
    viewer.close()
    wait_until(lambda: agent.queued() == 1, "the disconnect queued", timeout_s=20)
    viewer = Viewer(desktop["address"])
    wait_until(lambda: agent.queued() == 2, "the reconnect queued", timeout_s=20)
    viewer.close()
    wait_until(lambda: agent.queued() == 3, "the second disconnect queued", timeout_s=20)
    viewer = Viewer(desktop["address"])
    wait_until(lambda: agent.queued() == 4, "the second reconnect queued", timeout_s=20)
    # On disk, in order, each with its sequence number and idempotency key...
    queued = _queued_on_disk(agent)
    assert [q["event"] for q in queued] == ["disconnect", "reconnect", "disconnect", "reconnect"]
    assert [q["seq"] for q in queued] == sorted({q["seq"] for q in queued})
    assert len({q["key"] for q in queued}) == 4
    # ...so the agent may stop and start again in the middle of the outage without
    # losing, doubling or reordering one.
    agent.stop()
    agent.start()
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
    assert _queued_on_disk(agent) == queued
    assert "broker: " in agent.log()  # it noticed, and kept trying
    broker.start()

    wait_until(lambda: agent.queued() == 0, "the queue to drain", timeout_s=60)
    _state_is(api, desktop["id"], "connected")
    logged = events_of(api, desktop["id"], "session.")
    assert [e["kind"] for e in logged] == [
        "session.login",
        "session.disconnect",
        "session.reconnect",
        "session.disconnect",
        "session.reconnect",
    ]
    # Exactly the queued events, once each, in their order.
    assert [(e["detail"]["seq"], e["detail"]["key"]) for e in logged[1:]] == [
        (q["seq"], q["key"]) for q in queued
    ]
    viewer.close()


def test_idle_release_warns_first_and_activity_cancels_it(
    api: Api,
    sim: CloudSim,
    engine: Engine,
    broker: LiveBroker,
    agents: list[AgentProcess],
    tmp_path: Path,
) -> None:
    release = api.post(
        "release-plans",
        {
            "name": "idle",
            "rules": [
                {"event": "idle", "after_minutes": 30, "action": "release", "warn_minutes": 5}
            ],
        },
    )
    [desktop] = built_pool(api, sim, engine, 1, entry={"release_plan_id": release["id"]})
    agent = agent_for(tmp_path, sim, broker, desktop, idle_threshold_s=IDLE_S)
    display = f":{xvnc_of(sim, desktop['external_id'])['display']}"
    agents.append(agent.start())
    wait_until(
        lambda: api.get(f"desktops/{desktop['id']}")["agent_state"] == "running",
        "the agent to enrol",
        timeout_s=30,
    )
    user = api.login("user0")["offers"][0]["desktop"]
    assert user["id"] == desktop["id"]
    with KeepActive(display):  # the user works while connecting: not idle yet
        viewer = Viewer(desktop["address"])
        _state_is(api, desktop["id"], "logged_in", agent)
    drivers = DriverCache(api.ctx)

    def idle_timers() -> dict[str, Any]:
        _state_is(api, desktop["id"], "idle")
        found = wait_until(lambda: timers_of(api, desktop["id"]), "the idle timers", timeout_s=10)
        return {t["action"]: t for t in found}

    def warned(count: int) -> list[dict[str, Any]]:
        return wait_until(
            lambda: [e for e in events_of(api, desktop["id"], "agent.message")][count - 1 :],
            "the agent to deliver the warning",
            timeout_s=20,
        )

    # Idle past the threshold: a warning 25 minutes on, the release 30 minutes on.
    timers = idle_timers()
    assert set(timers) == {"warn", "release"}
    idle_at = datetime.now(UTC)
    assert fire_due(api.ctx, drivers, idle_at + timedelta(minutes=26)) == 1
    [delivered] = warned(1)
    assert delivered["detail"]["ok"] is True
    assert "in 5 minutes" in delivered["detail"]["message"]
    assert "released" in (agent.state / "messages.log").read_text()
    # The user moves the mouse after the warning (and keeps working): the release is off.
    with KeepActive(display):
        viewer.move()
        _state_is(api, desktop["id"], "connected")
        assert timers_of(api, desktop["id"]) == []
        assert fire_due(api.ctx, drivers, idle_at + timedelta(minutes=31)) == 0
        assert api.get(f"desktops/{desktop['id']}")["assigned_user_id"] is not None

    # Idle again, and this time nobody comes back: warned, released, logged off.
    idle_timers()
    idle_at = datetime.now(UTC)
    assert fire_due(api.ctx, drivers, idle_at + timedelta(minutes=26)) == 1
    warned(2)
    assert fire_due(api.ctx, drivers, idle_at + timedelta(minutes=31)) == 1
    kinds = [e["kind"] for e in events_of(api, desktop["id"])]
    assert kinds[-2:] == ["plan.release", "plan.logoff"], kinds
    assert api.get(f"desktops/{desktop['id']}")["assigned_user_id"] is None
    [logged_off] = wait_until(
        lambda: events_of(api, desktop["id"], "agent.logoff"), "the agent to log off", timeout_s=20
    )
    assert logged_off["detail"]["ok"] is True
    # The viewer was disconnected by the desktop, and the session ended.
    viewer.sock.settimeout(10)
    assert _drained(viewer)
    session = api.get(f"sessions?desktop_id={desktop['id']}")["items"][0]
    wait_until(
        lambda: (
            api.get(f"sessions?desktop_id={desktop['id']}")["items"][0]["state"] == "logged_out"
        ),
        "the session to be logged out",
        timeout_s=20,
    )
    assert session["username"] == "user0"


def _drained(viewer: Viewer) -> bool:
    """True once the desktop closed the viewer's connection."""
    try:
        while True:
            if not viewer.sock.recv(65536):
                return True
    except TimeoutError:
        return False  # still open: the desktop did not drop it
    except OSError:
        return True  # reset by the desktop

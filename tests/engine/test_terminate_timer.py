"""A plan timer that terminates a desktop: the desktop leaves the claim before the center
call (a login during the call must not be handed the machine being deleted), a node
that lost the timer's lease calls nothing (another node judges it again), and a node
that died after taking the desktop out leaves it to the timer's next holder, who
finishes the terminate or puts the desktop back (never one an administrator took out)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from cloudsim.server import CloudSim
from deskbroker.bootstrap import add_local_user
from deskbroker.centers.base import CenterDriver, MachineInfo, PowerAction
from deskbroker.engine import plans as engine_plans
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.turns import CenterTurns
from deskbroker.services.context import BrokerContext
from deskbroker.store import leases
from deskbroker.store.tables import Timer
from tests.desktop_agent import Agent, assigned_desktop, events_of, fire_due, timers_of, with_plans
from tests.engine.conftest import openstack_center
from tests.helpers import USER_PASSWORD, Api, run_queued_scan

TERMINATE_AT_LOGOUT = [{"event": "logout", "after_minutes": 0, "action": "terminate"}]


class _CallsLate:
    """The center's own driver, except that ``first`` runs just before a terminate or a
    power action reaches the center: what a login or another node did in that moment."""

    def __init__(self, driver: CenterDriver, first: Callable[[], None], calls: list[str]) -> None:
        self._driver = driver
        self._first = first
        self._calls = calls

    def terminate(self, machine: MachineInfo) -> None:
        self._first()
        self._calls.append("terminate")
        self._driver.terminate(machine)

    def power(self, machine: MachineInfo, action: PowerAction) -> None:
        self._first()
        self._calls.append(action.value)
        self._driver.power(machine, action)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)


class _Drivers(DriverCache):
    def __init__(self, ctx: BrokerContext, first: Callable[[], None]) -> None:
        super().__init__(ctx)
        self._first = first
        self.calls: list[str] = []

    def get(self, center: Any) -> CenterDriver:
        return cast(CenterDriver, _CallsLate(super().get(center), self._first, self.calls))


def _one_deletable_desktop(api: Api, sim: CloudSim, *, users: int) -> None:
    sim.seed_servers(1, name_prefix="vdi")
    center = run_queued_scan(api, openstack_center(api, sim, retries=0)["id"])
    assert center["status"] == "ok", center["status_message"]
    pool = api.post("pools", {"name": "cloud", "center_ids": [center["id"]]})
    policy = api.post("policies", {"name": "cloud", "entries": [{"pool_id": pool["id"]}]})
    api.post("assignment-rules", {"identity_source_id": api.source_id(), "policy_id": policy["id"]})
    for i in range(users):
        add_local_user(api.ctx, f"user{i}", USER_PASSWORD)
    api.ids.update(center=center["id"], pool=pool["id"], policy=policy["id"])
    for desktop in api.get("desktops")["items"]:
        api.patch(f"desktops/{desktop['id']}", {"deletable": True})


def _logged_out_and_released(api: Api, **plans: Any) -> str:
    """user0's desktop with a timer set by their logout, then released by an admin: a
    free desktop in its pool while the timer is pending."""
    with_plans(api, **plans)
    desktop = assigned_desktop(api, "user0")
    agent = Agent.mint(api, desktop)
    agent.send("login")
    agent.send("logout")
    api.delete(f"assignments/{desktop}")
    assert api.get("assignments")["items"] == [] and timers_of(api, desktop)
    return desktop


def _server(sim: CloudSim, api: Api, desktop: str) -> dict[str, Any]:
    external = api.get(f"desktops/{desktop}")["external_id"]
    return dict(next(s for s in sim.servers("demo") if s["id"] == external))


def _status(sim: CloudSim, api: Api, desktop: str) -> str:
    return str(_server(sim, api, desktop)["status"])


def test_a_login_during_the_terminate_is_not_given_the_desktop(
    api: Api, sim: CloudSim, ctx: BrokerContext
) -> None:
    _one_deletable_desktop(api, sim, users=2)
    desktop = _logged_out_and_released(api, release=TERMINATE_AT_LOGOUT)
    offered: list[dict[str, Any]] = []
    drivers = _Drivers(ctx, lambda: offered.extend(api.login("user1")["offers"]))

    assert fire_due(ctx, drivers, datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert drivers.calls == ["terminate"]
    assert [o["status"] for o in offered] == ["queued"], offered
    assert api.get("assignments")["items"] == []
    row = api.get(f"desktops/{desktop}")
    assert (row["power_state"], row["availability"]) == ("deleting", "unavailable")
    assert [e["kind"] for e in events_of(api, desktop)] == ["plan.terminate"]


def test_a_failed_terminate_puts_the_desktop_back_in_the_claim(
    api: Api, sim: CloudSim, ctx: BrokerContext
) -> None:
    """The retry judges again; until then the desktop is free as before, and a login
    that takes it cancels the retry (the desktop is someone else's now)."""
    _one_deletable_desktop(api, sim, users=2)
    desktop = _logged_out_and_released(api, release=TERMINATE_AT_LOGOUT)
    sim.inject_fault(500, method="DELETE", path=r"/servers/", times=None)
    now = datetime.now(UTC) + timedelta(seconds=1)

    assert fire_due(ctx, DriverCache(ctx), now) == 1
    assert api.get(f"desktops/{desktop}")["availability"] == "available"
    [timer] = timers_of(api, desktop)
    assert timer["failures"] == 1
    assert [e["kind"] for e in events_of(api, desktop)] == ["plan.retry"]
    assert assigned_desktop(api, "user1") == desktop

    sim.clear_faults()
    assert fire_due(ctx, DriverCache(ctx), now + timedelta(hours=2)) == 1
    assert [e["kind"] for e in events_of(api, desktop)] == ["plan.retry", "plan.cancelled"]
    assert _status(sim, api, desktop) == "ACTIVE"


def _lease_to(ctx: BrokerContext, desktop: str, owner: str) -> None:
    """Another node took the timer over: its lease ran out while this one stalled."""
    with ctx.db.write() as session:
        timer = session.query(Timer).filter_by(desktop_id=desktop).one()
        timer.lease_owner = owner
        timer.lease_expires_at = datetime.now(UTC) + timedelta(minutes=1)


@pytest.mark.parametrize(
    ("plans", "availability"),
    [
        ({"release": TERMINATE_AT_LOGOUT}, "unavailable"),
        ({"power": [{"event": "logout", "after_minutes": 0, "action": "shutdown"}]}, "available"),
    ],
    ids=["terminate", "shutdown"],
)
def test_a_node_that_lost_the_timers_lease_calls_nothing(
    api: Api,
    sim: CloudSim,
    ctx: BrokerContext,
    monkeypatch: pytest.MonkeyPatch,
    plans: dict[str, Any],
    availability: str,
) -> None:
    """This node judged, then stalled past the lease; another node holds the timer now
    and judges it again. Checked just before the call, so the center never hears of it."""
    _one_deletable_desktop(api, sim, users=1)
    desktop = _logged_out_and_released(api, **plans)
    judge = engine_plans._judge_and_release

    def judge_then_stall(*args: Any) -> Any:
        judged = judge(*args)
        _lease_to(ctx, desktop, "other-broker:1")
        return judged

    monkeypatch.setattr(engine_plans, "_judge_and_release", judge_then_stall)
    drivers = _Drivers(ctx, lambda: None)

    assert fire_due(ctx, drivers, datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert drivers.calls == []
    assert _status(sim, api, desktop) == "ACTIVE"
    [timer] = timers_of(api, desktop)
    assert timer["failures"] == 0
    assert events_of(api, desktop) == []
    row = api.get(f"desktops/{desktop}")
    # The other node decides; until it does a terminate's desktop stays out of the claim.
    assert (row["power_state"], row["availability"]) == ("running", availability)


def test_a_session_coming_back_before_the_call_stops_it_and_frees_the_desktop(
    api: Api, sim: CloudSim, ctx: BrokerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user logs in on the machine between the judge and the call: the session
    event deletes the timer, so nobody else will finish it, and the desktop the judge
    took out of the claim is put back."""
    _one_deletable_desktop(api, sim, users=1)
    desktop = _logged_out_and_released(api, release=TERMINATE_AT_LOGOUT)
    judge = engine_plans._judge_and_release

    def judge_then_login(*args: Any) -> Any:
        judged = judge(*args)
        Agent.mint(api, desktop).send("login")
        return judged

    monkeypatch.setattr(engine_plans, "_judge_and_release", judge_then_login)
    drivers = _Drivers(ctx, lambda: None)

    assert fire_due(ctx, drivers, datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert drivers.calls == []
    assert _status(sim, api, desktop) == "ACTIVE"
    assert timers_of(api, desktop) == []
    assert api.get(f"desktops/{desktop}")["availability"] == "available"


class _Crash(BaseException):
    """The node's process dies: nothing after this point of its work runs (a
    ``BaseException``, so none of the engine's ``except Exception`` catches it)."""


def _crash() -> None:
    raise _Crash


def _node_dies_before_the_call(ctx: BrokerContext, now: datetime) -> None:
    """Node A claims the due timer, judges it (the desktop leaves the claim, committed)
    and dies before its terminate reaches the center; its lease stays on the timer."""
    with ctx.db.write() as session:
        [timer_id] = leases.claim_due(
            session, Timer, Timer.due_at, owner="node-a:1", now=now, ttl_s=60
        )
    drivers = _Drivers(ctx, _crash)
    with pytest.raises(_Crash):
        engine_plans.execute_timer(ctx, drivers, timer_id, "node-a:1", now)
    assert drivers.calls == []


def test_the_next_holder_finishes_a_terminate_whose_node_died(
    api: Api, sim: CloudSim, ctx: BrokerContext
) -> None:
    _one_deletable_desktop(api, sim, users=1)
    desktop = _logged_out_and_released(api, release=TERMINATE_AT_LOGOUT)
    now = datetime.now(UTC) + timedelta(seconds=1)
    _node_dies_before_the_call(ctx, now)
    assert api.get(f"desktops/{desktop}")["availability"] == "unavailable"
    with ctx.db.read() as session:
        timer = session.query(Timer).filter_by(desktop_id=desktop).one()
        # Marked in node A's judging unit: the take-out is the engine's, for this timer.
        assert (timer.lease_owner, timer.took_out_at is not None) == ("node-a:1", True)
    # An administrator sees why the desktop is out.
    [listed] = api.get(f"timers?desktop_id={desktop}")["items"]
    assert listed["took_out_at"] is not None and listed["took_out_at"].endswith("Z"), listed
    # Node A's lease still runs: nobody else may take the timer yet.
    assert fire_due(ctx, DriverCache(ctx), now + timedelta(seconds=30)) == 0

    assert fire_due(ctx, DriverCache(ctx), now + timedelta(minutes=2)) == 1
    server = _server(sim, api, desktop)
    # The simulator finishes a delete after half a second: either is the terminate.
    assert server["task_state"] == "deleting" or server["status"] == "DELETED", server
    assert timers_of(api, desktop) == []
    row = api.get(f"desktops/{desktop}")
    assert (row["power_state"], row["availability"]) == ("deleting", "unavailable")
    assert [e["kind"] for e in events_of(api, desktop)] == ["plan.terminate"]


def test_the_next_holder_puts_the_desktop_back_when_the_terminate_no_longer_applies(
    api: Api, sim: CloudSim, ctx: BrokerContext
) -> None:
    """The administrator made the desktop not deletable while node A was dead: the
    next holder skips the terminate and the desktop node A took out is free again."""
    _one_deletable_desktop(api, sim, users=2)
    desktop = _logged_out_and_released(api, release=TERMINATE_AT_LOGOUT)
    now = datetime.now(UTC) + timedelta(seconds=1)
    _node_dies_before_the_call(ctx, now)
    api.patch(f"desktops/{desktop}", {"deletable": False})

    assert fire_due(ctx, DriverCache(ctx), now + timedelta(minutes=2)) == 1
    assert _status(sim, api, desktop) == "ACTIVE"
    assert timers_of(api, desktop) == []
    row = api.get(f"desktops/{desktop}")
    assert (row["power_state"], row["availability"]) == ("running", "available")
    assert [e["kind"] for e in events_of(api, desktop)] == ["plan.skipped"]
    assert assigned_desktop(api, "user1") == desktop


def test_the_next_holders_failed_terminate_puts_the_desktop_back(
    api: Api, sim: CloudSim, ctx: BrokerContext
) -> None:
    """Node B finds the desktop already out (node A's doing): its failing call still
    puts it back, and the retry that follows judges anew."""
    _one_deletable_desktop(api, sim, users=1)
    desktop = _logged_out_and_released(api, release=TERMINATE_AT_LOGOUT)
    now = datetime.now(UTC) + timedelta(seconds=1)
    _node_dies_before_the_call(ctx, now)
    sim.inject_fault(500, method="DELETE", path=r"/servers/", times=None)

    assert fire_due(ctx, DriverCache(ctx), now + timedelta(minutes=2)) == 1
    assert api.get(f"desktops/{desktop}")["availability"] == "available"
    [timer] = timers_of(api, desktop)
    assert timer["failures"] == 1

    sim.clear_faults()
    assert fire_due(ctx, DriverCache(ctx), now + timedelta(hours=2)) == 1
    row = api.get(f"desktops/{desktop}")
    assert (row["power_state"], row["availability"]) == ("deleting", "unavailable")
    assert [e["kind"] for e in events_of(api, desktop)] == ["plan.retry", "plan.terminate"]


def test_a_login_after_the_node_died_puts_the_desktop_back(
    api: Api, sim: CloudSim, ctx: BrokerContext
) -> None:
    """The session event that cancels the timer deletes it, and with it the only record
    that the engine took the desktop out: that event puts the desktop back."""
    _one_deletable_desktop(api, sim, users=1)
    desktop = _logged_out_and_released(api, release=TERMINATE_AT_LOGOUT)
    now = datetime.now(UTC) + timedelta(seconds=1)
    _node_dies_before_the_call(ctx, now)

    Agent.mint(api, desktop).send("login")
    assert timers_of(api, desktop) == []
    assert api.get(f"desktops/{desktop}")["availability"] == "available"
    assert fire_due(ctx, DriverCache(ctx), now + timedelta(minutes=2)) == 0
    assert _status(sim, api, desktop) == "ACTIVE"


@pytest.mark.parametrize("when", ["before the timer fired", "while the node was dead"])
def test_an_administrators_take_out_is_never_undone(
    api: Api, sim: CloudSim, ctx: BrokerContext, when: str
) -> None:
    """Taken out by an administrator (before the judge, or over node A's take-out while
    node A was dead), the desktop stays out when the terminate does not happen."""
    _one_deletable_desktop(api, sim, users=1)
    desktop = _logged_out_and_released(api, release=TERMINATE_AT_LOGOUT)
    now = datetime.now(UTC) + timedelta(seconds=1)
    if when == "before the timer fired":
        api.patch(f"desktops/{desktop}", {"availability": "unavailable"})
    _node_dies_before_the_call(ctx, now)
    if when == "while the node was dead":
        api.patch(f"desktops/{desktop}", {"availability": "unavailable"})
    api.patch(f"desktops/{desktop}", {"deletable": False})

    assert fire_due(ctx, DriverCache(ctx), now + timedelta(minutes=2)) == 1
    assert timers_of(api, desktop) == []
    assert [e["kind"] for e in events_of(api, desktop)] == ["plan.skipped"]
    row = api.get(f"desktops/{desktop}")
    assert (row["power_state"], row["availability"]) == ("running", "unavailable")


def test_a_timer_waits_its_turn_while_its_center_holds_its_share_of_workers(
    api: Api, sim: CloudSim, ctx: BrokerContext
) -> None:
    """Many users logging off a center whose cloud hangs must not hold every engine
    worker: the center's timers take turns with its scans and builds, and one refused a
    turn waits, unleased and not counted as a failure, calling nothing."""
    _one_deletable_desktop(api, sim, users=1)
    desktop = _logged_out_and_released(api, release=TERMINATE_AT_LOGOUT)
    turns = CenterTurns(share=2)
    tenant = str(api.get(f"desktops/{desktop}")["tenant_id"])
    held = [turns.take(api.ids["center"], tenant) for _ in range(2)]  # two calls already out
    assert held == [True, True]
    drivers = _Drivers(ctx, lambda: None)
    now = datetime.now(UTC) + timedelta(seconds=1)

    assert fire_due(ctx, drivers, now, turns) == 1
    assert drivers.calls == []
    [timer] = timers_of(api, desktop)
    assert timer["failures"] == 0
    with ctx.db.read() as session:
        row = session.get(Timer, timer["id"])
        assert row is not None and row.lease_owner is None
    # Due again a moment later, not at once: the loop does not spin on it.
    assert fire_due(ctx, drivers, now) == 0
    assert api.get(f"desktops/{desktop}")["availability"] == "available"

    turns.end(api.ids["center"], tenant)
    assert fire_due(ctx, drivers, now + timedelta(seconds=5), turns) == 1
    assert drivers.calls == ["terminate"]
    assert turns.room(api.ids["center"], tenant) == 1  # its turn ended with the call
    assert timers_of(api, desktop) == []

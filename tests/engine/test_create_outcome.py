"""A create whose outcome the cloud left unknown is waited for, not repeated at once.

When Nova answers ``POST /servers`` after the center's ``timeout_s`` (or answers 5xx, or
drops the connection once the request is out), the instance may exist all the same: the
task stays ``creating`` and looks for it by its tag until no create can land any more,
and only then tries again. A create the cloud refused outright is retried as before.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import select

from cloudsim.server import CloudSim
from deskbroker.centers.openstack.overdue import NoHelperLeft, Overdue
from deskbroker.centers.openstack.session import CloudFailure
from deskbroker.engine.builds import made_nothing
from deskbroker.engine.runner import Engine
from deskbroker.errors import CenterError
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import ProvisioningTask
from tests.engine.conftest import openstack_center, provisioning_pool, run_until
from tests.helpers import Api, run_queued_scan, wait_until

CREATE = r"/servers$"


def _live(sim: CloudSim) -> set[str]:
    return {
        str(s["id"])
        for s in sim.servers("demo")
        if s["status"] != "DELETED" and s["task_state"] != "deleting"
    }


def _available(api: Api, pool_id: str) -> int:
    counts: dict[str, int] = api.get(f"pools/{pool_id}/status")["counts"]
    return counts["available"]


def _tasks(ctx: BrokerContext, pool_id: str) -> list[dict[str, Any]]:
    with ctx.db.read() as session:
        rows = session.scalars(
            select(ProvisioningTask).where(ProvisioningTask.pool_id == pool_id)
        ).all()
        return [
            {
                "state": t.state,
                "attempts": t.attempts,
                "external_id": t.external_id,
                "last_error": t.last_error,
            }
            for t in rows
        ]


def _where_it_stands(api: Api, sim: CloudSim, ctx: BrokerContext, pool_id: str) -> str:
    """What a wait that timed out found: the task's row with its lease, the pool's
    counts, the creates asked and the servers, so a failure says where the build stuck."""
    with ctx.db.read() as session:
        rows = session.scalars(
            select(ProvisioningTask).where(ProvisioningTask.pool_id == pool_id)
        ).all()
        found = [
            {
                "state": t.state,
                "attempts": t.attempts,
                "external_id": t.external_id,
                "next_step_at": str(t.next_step_at),
                "step_started_at": str(t.step_started_at),
                "lease_owner": t.lease_owner,
                "lease_expires_at": str(t.lease_expires_at),
                "last_error": t.last_error,
            }
            for t in rows
        ]
    servers = [(s["id"], s["status"], s["task_state"]) for s in sim.servers("demo")]
    creates = sim.request_count(method="POST", path=CREATE)
    counts = api.get(f"pools/{pool_id}/status")["counts"]
    return (
        f"the desktop built; tasks {found}, pool {counts}, {creates} creates, "
        f"servers {servers}, now {time.strftime('%H:%M:%S', time.gmtime())}"
    )


def _tick_for(engine: Engine, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        engine.run_once()
        time.sleep(0.05)


def _center(api: Api, sim: CloudSim, **params: Any) -> dict[str, Any]:
    center = openstack_center(api, sim, **params)
    run_queued_scan(api, center["id"])  # a token and the microversion, before any create
    return center


def test_a_create_landing_after_the_deadline_is_adopted_not_repeated(
    api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext
) -> None:
    # Every create reaches Nova but is answered (and lands) half a second past the
    # center's one-second deadline: the broker gives up on the call (Overdue).
    center = _center(api, sim, timeout_s=1)
    sim.add_latency(1.5, method="POST", path=CREATE)
    pool = provisioning_pool(api, center["id"], n=1, m=1)
    run_until(engine, lambda: _available(api, pool["id"]) == 1, timeout_s=30)
    _tick_for(engine, 1.0)  # a retried create would have reached the cloud by now

    [task] = _tasks(ctx, pool["id"])
    assert sim.request_count(method="POST", path=CREATE) == 1
    assert _live(sim) == {task["external_id"]}
    assert (task["state"], task["attempts"]) == ("ready", 1)
    assert "did not answer within 1 s" in task["last_error"]
    [member] = api.get(f"pools/{pool['id']}/members")["items"]
    desktop = api.get(f"desktops/{member['id']}")
    assert desktop["external_id"] == task["external_id"]
    assert desktop["power_state"] == "running"


@pytest.mark.parametrize("fault", [500, "reset"])
def test_a_create_that_may_have_acted_waits_for_its_window_then_tries_once_more(
    api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext, fault: int | str
) -> None:
    center = _center(api, sim, timeout_s=2)
    sim.inject_fault(fault, method="POST", path=CREATE, times=1)
    pool = provisioning_pool(api, center["id"], n=1, m=1)
    run_until(engine, lambda: any(t["attempts"] == 1 for t in _tasks(ctx, pool["id"])))
    [task] = _tasks(ctx, pool["id"])
    # Still creating: the cloud may make that instance yet.
    assert task["state"] == "creating" and task["external_id"] is None
    _tick_for(engine, 1.0)
    assert sim.request_count(method="POST", path=CREATE) == 1
    # Once no create can land, one more try builds the desktop.
    run_until(
        engine,
        lambda: _available(api, pool["id"]) == 1,
        timeout_s=30,
        what=lambda: _where_it_stands(api, sim, ctx, pool["id"]),
    )
    [task] = _tasks(ctx, pool["id"])
    assert sim.request_count(method="POST", path=CREATE) == 2
    assert _live(sim) == {task["external_id"]}
    assert (task["state"], task["attempts"]) == ("ready", 1)


def test_a_build_adopted_after_it_finished_is_handed_over_at_once(
    api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext
) -> None:
    # One engine gives up on its create (answered past the one-second deadline) and
    # leaves the task to look for it by its tag; the instance lands and finishes.
    center = _center(api, sim, timeout_s=1)
    sim.add_latency(1.5, method="POST", path=CREATE)
    pool = provisioning_pool(api, center["id"], n=1, m=1)
    run_until(engine, lambda: any(t["attempts"] == 1 for t in _tasks(ctx, pool["id"])))
    engine.stop()
    sim.clear_latency()
    wait_until(
        lambda: [s for s in sim.servers("demo") if s["status"] == "ACTIVE"],
        "the instance to land and finish",
    )
    time.sleep(1.5)  # past the margin a listing's cursor keeps before the cloud's clock
    # Another engine takes the task over (another node, or this one restarted) with a
    # watcher listing changes from now on: no listing will show that instance change.
    second = Engine(ctx, workers=4)
    try:
        row = second.drivers.center(center["id"])
        assert row is not None
        second.drivers.watcher(row).start_cursor()
        # Handed over at the next tick, not after the build's half-minute direct look.
        run_until(
            second,
            lambda: _available(api, pool["id"]) == 1,
            timeout_s=15,
            what=lambda: _where_it_stands(api, sim, ctx, pool["id"]),
        )
    finally:
        second.stop()
    [task] = _tasks(ctx, pool["id"])
    assert sim.request_count(method="POST", path=CREATE) == 1
    assert (task["state"], task["attempts"]) == ("ready", 1)
    assert _live(sim) == {task["external_id"]}


def test_a_create_that_never_lands_fails_after_its_last_window(
    api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext
) -> None:
    center = _center(api, sim, timeout_s=1)
    sim.inject_fault(500, method="POST", path=CREATE, times=None)
    pool = provisioning_pool(api, center["id"], n=1, m=1)
    run_until(engine, lambda: api.get(f"pools/{pool['id']}")["status"] == "error", timeout_s=30)
    [failed] = [t for t in _tasks(ctx, pool["id"]) if t["state"] == "failed"]
    assert failed["attempts"] == 3 and "(500)" in failed["last_error"]
    assert api.get(f"pools/{pool['id']}")["last_error"].startswith("a build failed 3 times: ")
    assert not _live(sim)


@pytest.mark.parametrize("status", [400, 403])
def test_a_refused_create_is_retried_at_once(
    api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext, status: int
) -> None:
    # A long deadline: a refused create that waited for it would not be retried in time.
    center = _center(api, sim, timeout_s=60)
    sim.inject_fault(status, method="POST", path=CREATE, times=1, message="refused")
    pool = provisioning_pool(api, center["id"], n=1, m=1)
    run_until(engine, lambda: _available(api, pool["id"]) == 1, timeout_s=10)
    [task] = _tasks(ctx, pool["id"])
    assert sim.request_count(method="POST", path=CREATE) == 2
    assert _live(sim) == {task["external_id"]}
    assert (task["state"], task["attempts"]) == ("ready", 1)
    assert f"({status})" in task["last_error"]


def test_a_create_refused_every_time_fails_as_before(
    api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext
) -> None:
    center = _center(api, sim, timeout_s=60)
    sim.inject_fault(400, method="POST", path=CREATE, times=None, message="bad request")
    pool = provisioning_pool(api, center["id"], n=1, m=1)
    run_until(engine, lambda: api.get(f"pools/{pool['id']}")["status"] == "error", timeout_s=10)
    failed = [t for t in _tasks(ctx, pool["id"]) if t["state"] == "failed"]
    assert failed and failed[0]["attempts"] == 3
    assert not _live(sim)


def test_what_says_a_create_made_nothing() -> None:
    def raised(exc: BaseException, under: BaseException) -> BaseException:
        exc.__cause__ = under  # as ``raise exc from under`` leaves it
        return exc

    refused = ConnectionRefusedError(111, "Connection refused")
    # The cloud said no, or the request never left the broker: nothing was made.
    assert made_nothing(CloudFailure("POST /servers: bad flavor (400)", 400))
    assert made_nothing(CloudFailure("POST /servers: cells down (503)", 503))
    assert made_nothing(raised(CloudFailure("POST /servers: unreachable"), refused))
    assert made_nothing(CenterError("an OpenStack desktop needs an image and a flavor"))
    # Refused before sending, every helper place held (the session raises ``from None``,
    # which leaves the refusal as the context): a retry cannot make a second instance.
    try:
        try:
            raise NoHelperLeft("16 calls to this tenant's clouds are still hanging")
        except NoHelperLeft:
            raise CloudFailure("POST /servers: not asked") from None
    except CloudFailure as exc:
        assert made_nothing(exc)
    # No answer, a 5xx, a dropped connection, a driver bug: the instance may exist.
    assert not made_nothing(CloudFailure("POST /servers: failed (500)", 500))
    assert not made_nothing(raised(CloudFailure("POST /servers: no answer"), Overdue("x")))
    reset = ConnectionResetError(104, "Connection reset by peer")
    assert not made_nothing(raised(CloudFailure("POST /servers: unreachable"), reset))
    assert not made_nothing(KeyError("server"))

"""The fence on builds: a node that stalled past its lease on a provisioning task (reaped,
or the lease ran out) and came back records none of that step's outcome, and does not
terminate the instance: the node that took the task over is the one that decides.

Each test plays the stalled node and the node that took over in one process, with two
lease owners, against cloudsim; "taking over" is what the reaping and another node's
claim leave in the task's row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from cloudsim.server import CloudSim
from deskbroker.engine.builds import TaskStep
from deskbroker.engine.provisioner import reconcile_pool
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Desktop, Event, ProvisioningTask, utcnow
from deskbroker.store.tasks import TaskRow, claim_builds, read_task
from tests.engine.conftest import openstack_center, provisioning_pool, run_until
from tests.helpers import Api, wait_until

STALLED = "stalled:00000001"
TAKER = "taker:00000002"


def _later() -> datetime:
    """A moment when a build step no longer trusts the watcher's silence and asks the
    cloud about its instance itself."""
    return utcnow() + timedelta(seconds=31)


def _requested(api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext) -> str:
    """A pool wanting one desktop, its build requested: the center's id."""
    center = openstack_center(api, sim)
    pool = provisioning_pool(api, center["id"], n=1, m=1)
    assert reconcile_pool(ctx, engine.drivers, pool["id"], datetime.now(UTC)).endswith(
        "requested 1 more"
    )
    return str(center["id"])


def _claim(ctx: BrokerContext, center_id: str) -> TaskRow:
    with ctx.db.connect_write() as conn:
        (row,) = claim_builds(
            conn, center_id, limit=10, most=10, owner=STALLED, now=datetime.now(UTC), ttl_s=60
        )
    return row


def _lease(ctx: BrokerContext, task_id: str, owner: str) -> TaskRow:
    """The task's row as ``owner`` holds it now."""
    with ctx.db.write() as session:
        session.execute(
            update(ProvisioningTask)
            .where(ProvisioningTask.id == task_id)
            .values(lease_owner=owner, lease_expires_at=utcnow() + timedelta(seconds=60))
        )
    with ctx.db.read() as session:
        row = read_task(session, task_id)
    assert row is not None
    return row


def _free(ctx: BrokerContext, task_id: str) -> None:
    """The holder's step ended: the task is free, its next step due."""
    with ctx.db.write() as session:
        session.execute(
            update(ProvisioningTask)
            .where(ProvisioningTask.id == task_id)
            .values(lease_owner=None, lease_expires_at=None, next_step_at=utcnow())
        )


def _task(ctx: BrokerContext, task_id: str) -> ProvisioningTask:
    with ctx.db.read() as session:
        row = session.get(ProvisioningTask, task_id)
        assert row is not None
        session.expunge(row)
        return row


def _desktop(ctx: BrokerContext, desktop_id: str | None) -> Desktop:
    with ctx.db.read() as session:
        row = session.get(Desktop, desktop_id)
        assert row is not None
        session.expunge(row)
        return row


def _ready_events(ctx: BrokerContext) -> int:
    with ctx.db.read() as session:
        query = select(func.count()).where(Event.kind == "provision.ready")
        return int(session.scalar(query) or 0)


def _live(sim: CloudSim) -> list[dict[str, object]]:
    return [
        s for s in sim.servers("demo") if s["status"] != "DELETED" and s["task_state"] != "deleting"
    ]


def test_a_build_whose_lease_passed_on_before_it_asked_asks_nothing(
    api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext
) -> None:
    """The lease is renewed right before the cloud is asked: a node reaped while it was
    getting ready (another node claimed the task) creates no instance and records
    nothing. (A create that lands after the taker looked: tests/engine/test_engine_fence.)"""
    center_id = _requested(api, sim, engine, ctx)
    stalled = _claim(ctx, center_id)
    _lease(ctx, stalled.id, TAKER)
    TaskStep(ctx, engine.drivers, stalled, STALLED).build()
    assert _live(sim) == []
    task = _task(ctx, stalled.id)
    assert (task.state, task.lease_owner, task.external_id) == ("creating", TAKER, None)
    assert _desktop(ctx, stalled.desktop_id).external_id == f"task:{stalled.id}"
    assert _ready_events(ctx) == 0


def test_a_finish_seen_after_the_lease_passed_on_hands_nothing_over(
    api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext
) -> None:
    center_id = _requested(api, sim, engine, ctx)
    claimed = _claim(ctx, center_id)
    TaskStep(ctx, engine.drivers, claimed, STALLED).build()
    wait_until(lambda: _live(sim)[0]["status"] == "ACTIVE", "the build to finish in the cloud")
    stalled = _lease(ctx, claimed.id, STALLED)  # it claimed the look at the build...
    _lease(ctx, claimed.id, TAKER)  # ... and stalled until another node took it over
    TaskStep(ctx, engine.drivers, stalled, STALLED).run(_later())
    desktop = _desktop(ctx, claimed.desktop_id)
    assert (desktop.power_state, desktop.availability) == ("building", "unavailable")
    assert _ready_events(ctx) == 0
    task = _task(ctx, claimed.id)
    assert (task.state, task.lease_owner) == ("waiting", TAKER)

    _free(ctx, claimed.id)  # the holder's step ends; the engine hands the build over
    run_until(engine, lambda: _desktop(ctx, claimed.desktop_id).power_state == "running")
    assert _task(ctx, claimed.id).state == "ready"
    assert _ready_events(ctx) == 1


def test_a_failure_seen_after_the_lease_passed_on_terminates_nothing(
    api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext
) -> None:
    center_id = _requested(api, sim, engine, ctx)
    claimed = _claim(ctx, center_id)
    TaskStep(ctx, engine.drivers, claimed, STALLED).build()
    (server,) = _live(sim)
    sim.set_server_state(str(server["id"]), "ERROR", "no valid host was found")
    stalled = _lease(ctx, claimed.id, STALLED)
    _lease(ctx, claimed.id, TAKER)
    TaskStep(ctx, engine.drivers, stalled, STALLED).run(_later())
    # The instance the new holder may still use is left alone, and so is the task.
    assert [s["id"] for s in _live(sim)] == [server["id"]]
    task = _task(ctx, claimed.id)
    assert (task.state, task.lease_owner, task.attempts) == ("waiting", TAKER, 0)
    assert _desktop(ctx, claimed.desktop_id).external_id == server["id"]

    # The holder lets the task go at its next step; the engine then sees the failure and
    # cleans up as a failed attempt does.
    _free(ctx, claimed.id)
    run_until(engine, lambda: _task(ctx, claimed.id).attempts == 1)
    wait_until(lambda: server["id"] not in {s["id"] for s in _live(sim)}, "the instance to go")

"""The fence on the engine's background work beyond a build's steps: a periodic job is
never run twice at once by one engine and keeps its lease while it runs; a rollout round
that outlived its lease does not ask a cloud to rebuild a desktop handed out meanwhile;
a create still in flight when another node took its build over is waited for, not
doubled.

As in ``test_build_fence``, the stalled node and the node that took over are played in
one process with two lease owners, against cloudsim."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from cloudsim.server import CloudSim
from deskbroker.centers.base import ProvisionRequest
from deskbroker.centers.openstack.driver import OpenStackCenter
from deskbroker.domain.timestamps import aware
from deskbroker.engine import rebuilds
from deskbroker.engine.builds import TaskStep
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.store import rollouts as store
from deskbroker.store.jobs import JobKind
from deskbroker.store.tables import Center, DesktopRebuild, Job, ProvisioningTask, utcnow
from tests.engine.conftest import run_until
from tests.engine.test_build_fence import (
    STALLED,
    TAKER,
    _claim,
    _desktop,
    _lease,
    _live,
    _requested,
    _task,
)
from tests.engine.test_upkeep import _actions, _pool, _session
from tests.helpers import Api, wait_until


def _retention_lease(ctx: BrokerContext) -> datetime | None:
    with ctx.db.read() as session:
        return session.scalar(
            select(Job.lease_expires_at).where(Job.kind == JobKind.RETENTION.value)
        )


def test_a_job_still_running_is_not_claimed_again_and_keeps_its_lease(
    ctx: BrokerContext,
) -> None:
    engine = Engine(ctx, workers=4)
    engine.recover()
    runs: list[str] = []
    release = threading.Event()

    def slow(ctx_: BrokerContext, drivers: DriverCache, target: str, now: datetime) -> str:
        runs.append(target)
        release.wait(10)
        return "done"

    engine.handlers[JobKind.RETENTION.value] = slow
    try:
        engine.run_once(wait=False)  # the retention job is due at once: it starts
        wait_until(lambda: len(runs) == 1, "the first run to start")
        first_lease = _retention_lease(ctx)
        assert first_lease is not None
        # A lease later, the first run still going: the job looks due and free again.
        engine.run_once(utcnow() + timedelta(seconds=engine.ttl_s + 1), wait=False)
        time.sleep(0.3)
        assert len(runs) == 1, "the same engine ran the job twice at once"
        # A third of a lease on, the loop renews the running job's lease.
        engine._renewed -= engine.ttl_s
        time.sleep(0.01)
        engine.run_once(wait=False)
        renewed = _retention_lease(ctx)
        assert renewed is not None and renewed > first_lease
    finally:
        release.set()
        engine.drain()
        engine.stop()
    assert _retention_lease(ctx) is None  # the run let it go when it ended


def _rollout_job_held(api: Api, held: bool) -> None:
    """The pools' rollout jobs leased by another node (``held``), or free and due: the
    test decides when a round runs."""
    values: dict[str, Any] = (
        {"lease_owner": "other:00000003", "lease_expires_at": utcnow() + timedelta(hours=1)}
        if held
        else {"lease_owner": None, "lease_expires_at": None, "next_run_at": utcnow()}
    )
    with api.ctx.db.write() as session:
        session.execute(update(Job).where(Job.kind == JobKind.POOL_ROLLOUT.value).values(**values))


def _out_for_refresh(api: Api, sim: CloudSim, engine: Engine) -> tuple[str, str, str]:
    """A one-desktop pool refreshed on release, its desktop just released and out for
    the refresh, not asked yet: the pool, the desktop and its server."""
    pool, server_of = _pool(api, sim, engine, 1)
    answer = api.client.put(
        f"/api/v1/admin/pools/{pool}/upkeep",
        json={"refresh_on_release": True},
        headers=api.headers,
    )
    assert answer.status_code == 200, answer.text
    alice = _session(api, "alice")
    used = str(alice.desktop_id)
    _rollout_job_held(api, True)
    alice.send("logout", user="alice")

    def out() -> bool:
        engine.run_once()
        with api.ctx.db.read() as session:
            return session.get(DesktopRebuild, used) is not None

    wait_until(out, "the released desktop to be out for its refresh")
    return pool, used, server_of[used]


def test_a_stale_rollout_round_does_not_rebuild_a_desktop_handed_out_again(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    pool, used, server = _out_for_refresh(api, sim, engine)
    # A round reads its rows, then stalls past its lease...
    with api.ctx.db.read() as session:
        (stale,) = store.rebuilds_of(session, pool)
        center = session.get(Center, stale.center_id)
        assert center is not None
        session.expunge(center)
    assert not stale.started
    # ... while another round asks for the rebuild, watches it and gives the desktop back.
    _rollout_job_held(api, False)
    run_until(engine, lambda: api.get(f"desktops/{used}")["availability"] == "available")
    asked = _actions(sim, server)
    assert asked == 1
    bob = _session(api, "bob")
    assert bob.desktop_id == used
    # The stale round wakes: it must not ask the cloud for Bob's desktop.
    assert rebuilds._ask(api.ctx, engine.drivers.get(center), stale, datetime.now(UTC)) is None
    assert _actions(sim, server) == asked, "Bob's desktop was rebuilt under him"
    assert api.get(f"desktops/{used}")["power_state"] == "running"


def test_an_ask_never_answered_is_asked_again_once_its_call_is_over(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    _pool_id, used, server = _out_for_refresh(api, sim, engine)
    # A round claimed the ask 31 s ago and died before it reached the cloud.
    with api.ctx.db.write() as session:
        assert store.claim_ask(session, used, utcnow() - timedelta(seconds=31))
        assert not store.claim_ask(session, used, utcnow())  # one claim only
    # cloudsim's center answers within 30 s: that call is over, so the ask is made again
    # (the refresh is not skipped), once.
    _rollout_job_held(api, False)
    run_until(engine, lambda: api.get(f"desktops/{used}")["availability"] == "available")
    assert _actions(sim, server) == 1


def test_a_create_landing_after_the_taker_looked_is_adopted_not_doubled(
    api: Api,
    sim: CloudSim,
    engine: Engine,
    ctx: BrokerContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    center_id = _requested(api, sim, engine, ctx)
    stalled = _claim(ctx, center_id)
    create = OpenStackCenter.create

    def taken_over_while_asking(driver: OpenStackCenter, request: ProvisionRequest) -> Any:
        # The node is reaped during its call; the taker looks before the instance lands.
        taker = _lease(ctx, stalled.id, TAKER)
        TaskStep(ctx, engine.drivers, taker, TAKER).run(utcnow())
        return create(driver, request)

    monkeypatch.setattr(OpenStackCenter, "create", taken_over_while_asking)
    TaskStep(ctx, engine.drivers, stalled, STALLED).build()
    monkeypatch.setattr(OpenStackCenter, "create", create)
    (server,) = _live(sim)
    task = _task(ctx, stalled.id)
    # The taker did not start over: it looks again while the create may still land.
    assert (task.state, task.lease_owner, task.external_id) == ("creating", None, None)
    assert aware(task.next_step_at) > utcnow()

    taker = _lease(ctx, stalled.id, TAKER)
    TaskStep(ctx, engine.drivers, taker, TAKER).run(utcnow())
    assert _task(ctx, stalled.id).external_id == server["id"]
    run_until(engine, lambda: _desktop(ctx, stalled.desktop_id).power_state == "running")
    assert [s["id"] for s in _live(sim)] == [server["id"]]


def test_a_node_that_stalled_before_its_create_asks_nothing(
    api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext
) -> None:
    center_id = _requested(api, sim, engine, ctx)
    stalled = _claim(ctx, center_id)
    _lease(ctx, stalled.id, TAKER)  # reaped before it asked; another node holds the task
    TaskStep(ctx, engine.drivers, stalled, STALLED).build()
    assert _live(sim) == []
    # Once no create can land any more, the holder starts over, and one instance is built.
    with ctx.db.write() as session:
        session.execute(
            update(ProvisioningTask)
            .where(ProvisioningTask.id == stalled.id)
            .values(step_started_at=utcnow() - timedelta(seconds=31))
        )
    taker = _lease(ctx, stalled.id, TAKER)
    TaskStep(ctx, engine.drivers, taker, TAKER).run(utcnow())
    assert _task(ctx, stalled.id).state == "requested"
    run_until(engine, lambda: _desktop(ctx, stalled.desktop_id).power_state == "running")
    assert len(_live(sim)) == 1

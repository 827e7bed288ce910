"""Two brokers on one database build a pool together: the center's in-flight limit holds
for both, and no build is made or recorded twice."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from cloudsim.server import CloudSim
from deskbroker.config import Settings
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Desktop, ProvisioningTask
from tests.engine.conftest import openstack_center, provisioning_pool
from tests.helpers import Api, wait_until

DESKTOPS = 24
LIMIT = 4


def test_two_brokers_keep_to_the_in_flight_limit_and_build_each_desktop_once(
    api: Api, ctx: BrokerContext, settings: Settings, sim: CloudSim
) -> None:
    # Slow creations a little so that both brokers' claims overlap.
    sim.add_latency(0.02, method="POST", path="/servers")
    center = openstack_center(api, sim, max_in_flight=LIMIT)
    provisioning_pool(api, center["id"], n=DESKTOPS, m=DESKTOPS)
    brokers = [
        BrokerContext.from_settings(
            settings.model_copy(update={"broker_id": name, "engine_tick_s": 0.02})
        )
        for name in ("broker-a", "broker-b")
    ]
    engines = [Engine(broker, workers=8) for broker in brokers]
    peak, stop = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        flying = ProvisioningTask.state.in_(("creating", "waiting", "addressing"))
        while not stop.is_set():
            with ctx.db.read() as session:
                count = session.scalar(select(func.count()).where(flying)) or 0
            peak = max(peak, int(count))
            stop.wait(0.005)

    def ready() -> int:
        with ctx.db.read() as session:
            return int(
                session.scalar(
                    select(func.count()).where(
                        Desktop.power_state == "running", Desktop.availability == "available"
                    )
                )
                or 0
            )

    def in_flight() -> int:
        with ctx.db.read() as session:
            flying = ProvisioningTask.state.in_(("creating", "waiting", "addressing"))
            return int(session.scalar(select(func.count()).where(flying)) or 0)

    # One tick makes the pool's jobs and runs them at once: the builds are requested;
    # then both brokers claim at the same moment: together they take the limit, no more.
    engines[0].run_once()
    assert in_flight() == 0
    with ctx.db.read() as session:
        requested = session.scalar(
            select(func.count()).where(ProvisioningTask.state == "requested")
        )
    assert requested == DESKTOPS
    barrier = threading.Barrier(2)

    def tick(engine: Engine) -> None:
        barrier.wait()
        engine.run_once(wait=False)

    ticks = [threading.Thread(target=tick, args=(engine,)) for engine in engines]
    for thread in ticks:
        thread.start()
    for thread in ticks:
        thread.join()
    assert in_flight() == LIMIT
    for engine in engines:
        engine.drain()  # ``start`` frees what this broker id held, as after a crash

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for engine in engines:
        engine.start()
    try:
        wait_until(
            lambda: ready() >= DESKTOPS, lambda: f"{ready()} of {DESKTOPS} ready", timeout_s=90
        )
    finally:
        for engine in engines:
            engine.stop()
        stop.set()
        sampler.join()
        for broker in brokers:
            broker.db.dispose()

    assert ready() == DESKTOPS
    assert 0 < peak <= LIMIT, f"{peak} builds in flight at once, the limit is {LIMIT}"
    live = {
        s["id"]
        for s in sim.servers("demo")
        if s["status"] != "DELETED" and s["task_state"] != "deleting"
    }
    with ctx.db.read() as session:
        recorded = session.scalars(select(Desktop.external_id)).all()
    assert len(recorded) == DESKTOPS == len(set(recorded))
    assert set(recorded) == live

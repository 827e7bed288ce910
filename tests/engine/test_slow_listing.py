"""A cloud slow to list its servers holds a watch thread, never the engine's loop."""

from __future__ import annotations

import time

from cloudsim.server import CloudSim
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from tests.engine.conftest import openstack_center, provisioning_pool
from tests.helpers import Api, wait_until


def test_the_loop_ticks_on_while_a_listing_of_builds_hangs(
    api: Api, sim: CloudSim, ctx: BrokerContext
) -> None:
    sim.set_timings(build=3600)  # the build stays waiting for the cloud
    center = openstack_center(api, sim)
    provisioning_pool(api, center["id"], n=1, m=1)
    engine = Engine(ctx, workers=4)
    engine.start()
    try:
        wait_until(
            lambda: api.get("provisioning-tasks?state=waiting")["total"],
            "the build to reach waiting",
        )
        listings = sim.request_count(method="GET", path="/servers/detail")
        sim.add_latency(4, method="GET", path="/servers/detail")
        gaps: list[float] = []
        until = time.monotonic() + 3
        while time.monotonic() < until:
            gaps.append(ctx.pulse.since_last_tick() or 0.0)
            time.sleep(0.02)
    finally:
        engine.stop()  # waits for the slow listing to come back
        sim.clear_latency()
    slow = sim.request_count(method="GET", path="/servers/detail") - listings
    assert slow >= 1, "the engine did not list the builds while the cloud was slow"
    # A loop waiting on the listing would stand still for the whole 4 s of latency; a
    # loaded machine stretches a healthy gap (ticks of 0.2-0.3 s) past 1 s now and then.
    assert max(gaps) < 2.5, f"the loop stood still for {max(gaps):.1f} s"

"""A build's first look at a cloud that never answers holds that build's worker, never the
engine's loop: the watcher asks the cloud where to list from with its lock let go, so the
loop (which reads the watcher every tick) goes on ticking for every tenant."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from cloudsim.server import CloudSim
from deskbroker.api.app import create_app
from deskbroker.bootstrap import ensure_defaults
from deskbroker.config import Settings
from deskbroker.engine.runner import Engine
from deskbroker.engine.watch import BuildWatcher
from deskbroker.errors import CenterError
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Center
from tests.engine.conftest import openstack_center
from tests.helpers import Api, wait_until
from tests.tarpit import silent_center, tarpit

CLOUD_TIMEOUT_S = 8.0
# A healthy loop ticks every 0.05 s; a loaded machine (or a database stalled by the rest
# of the suite) stretches a gap now and then, once to 7 s in a full run. A loop held by
# the watcher's lock stands still for the whole watch (six seconds).
STILL_S = 4.0


@pytest.fixture
def quick(settings: Settings) -> Iterator[BrokerContext]:
    # Room for the silent center's scan and leak sweep (each held by the silence too)
    # and its build, so the build reaches its first look at the cloud.
    ctx = BrokerContext.from_settings(
        settings.model_copy(update={"engine_tick_s": 0.05, "engine_center_workers": 4})
    )
    ensure_defaults(ctx)
    yield ctx
    ctx.db.dispose()


def test_the_loop_ticks_on_while_a_build_waits_for_its_cursor_on_a_silent_cloud(
    quick: BrokerContext,
) -> None:
    ctx = quick
    with TestClient(create_app(ctx)) as client, tarpit() as pit:
        api = Api.with_admin(client, ctx)
        center = silent_center(api, pit, timeout_s=CLOUD_TIMEOUT_S)
        api.post(
            "pools",
            {
                "name": "auto",
                "center_ids": [center["id"]],
                "provisioning": {
                    "enabled": True,
                    "min_unassigned": 1,
                    "max_total": 1,
                    "parameters": {
                        "name_template": "vdi-{SEQUENCE:3}",
                        "image": "cirros",
                        "flavor": "m1.tiny",
                    },
                },
            },
        )
        engine = Engine(ctx, workers=8)
        engine.start()
        try:
            wait_until(
                lambda: api.get("provisioning-tasks?state=creating")["total"],
                "the build to start creating (and ask the silent cloud where to list from)",
            )
            started = time.monotonic()
            gaps: list[float] = []
            # Well inside the cloud's deadline: the build is still waiting on it.
            while time.monotonic() - started < CLOUD_TIMEOUT_S - 2:
                gaps.append(ctx.pulse.since_last_tick() or 0.0)
                time.sleep(0.02)
            creating = api.get("provisioning-tasks?state=creating")["total"]
        finally:
            engine.stop()
    assert creating == 1, "the build did not stay waiting on the silent cloud"
    # A loop waiting on the watcher's lock stands still until the cloud's deadline.
    assert max(gaps) < STILL_S, f"the loop stood still for {max(gaps):.1f} s"


def test_a_cursor_started_against_a_silent_cloud_blocks_no_other_reader(
    api: Api, ctx: BrokerContext
) -> None:
    """The same at the watcher: one thread stuck starting the cursor, another reads."""
    with tarpit() as pit:
        center = silent_center(api, pit, timeout_s=3.0)
        with ctx.db.read() as session:
            found = session.get(Center, center["id"])
            assert found is not None
            session.expunge(found)
        driver = ctx.drivers.get(found)
        watcher = BuildWatcher(driver, min_interval_s=0.05)
        failures: list[BaseException] = []

        def start() -> None:
            try:
                watcher.start_cursor()
            except CenterError as exc:
                failures.append(exc)

        stuck = threading.Thread(target=start, daemon=True)
        stuck.start()
        wait_until(lambda: pit.accepted, "the cursor's call to reach the silent cloud")
        began = time.monotonic()
        assert watcher.finished() == {}
        assert watcher.next_listing(1) == float("inf")  # no cursor yet: nothing to list
        assert watcher.look("x") is None
        took = time.monotonic() - began
        assert took < 0.5, f"reading the watcher waited {took:.1f} s on the silent cloud"
        assert stuck.is_alive(), "the call to the silent cloud ended early"
        stuck.join(timeout=10)
        assert failures, "the silent cloud's deadline did not end the cursor's call"


def _cloud_watcher(api: Api, ctx: BrokerContext, sim: CloudSim) -> BuildWatcher:
    center = openstack_center(api, sim)
    with ctx.db.read() as session:
        row = session.get(Center, center["id"])
        assert row is not None
        session.expunge(row)
    return BuildWatcher(ctx.drivers.get(row), min_interval_s=0.05)


def _start_together(watcher: BuildWatcher, n: int) -> list[BaseException | None]:
    """``n`` builds starting the cursor at once, a little apart; what each raised."""
    outcomes: list[BaseException | None] = [None] * n

    def start(i: int) -> None:
        try:
            watcher.start_cursor()
        except CenterError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=start, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    for thread in threads:
        thread.join(timeout=20)
    assert not any(t.is_alive() for t in threads), "a start of the cursor hung"
    return outcomes


def test_builds_starting_together_ask_the_cloud_for_the_cursor_once(
    api: Api, ctx: BrokerContext, sim: CloudSim
) -> None:
    watcher = _cloud_watcher(api, ctx, sim)
    watcher.driver.inventory()  # authenticated, so only listings are counted below
    listings = sim.request_count(method="GET", path="/servers/detail")
    sim.add_latency(1.0, method="GET", path="/servers/detail")
    assert _start_together(watcher, 3) == [None, None, None]
    # The others waited for the first one's answer instead of asking again.
    assert sim.request_count(method="GET", path="/servers/detail") - listings == 1
    assert watcher.next_listing(1) < float("inf")  # a cursor to list from
    assert watcher.watching_since is not None


def test_when_the_first_ask_for_the_cursor_fails_a_waiting_build_asks_itself(
    api: Api, ctx: BrokerContext, sim: CloudSim
) -> None:
    watcher = _cloud_watcher(api, ctx, sim)
    watcher.driver.inventory()
    listings = sim.request_count(method="GET", path="/servers/detail")
    sim.add_latency(1.0, method="GET", path="/servers/detail")
    sim.inject_fault("403", method="GET", path="/servers/detail", times=1)
    first, second = _start_together(watcher, 2)
    assert isinstance(first, CenterError) and second is None
    assert sim.request_count(method="GET", path="/servers/detail") - listings == 2
    assert watcher.next_listing(1) < float("inf")

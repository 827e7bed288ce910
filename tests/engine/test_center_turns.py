"""One center's work holds at most ``engine_center_workers`` engine workers: a center
whose cloud never answers keeps its scan, sweep and builds waiting their turn, and
another center's builds go on meanwhile on the workers left."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cloudsim.server import CloudSim
from deskbroker.config import Settings
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.removals import remove_desktops
from deskbroker.engine.runner import Engine
from deskbroker.engine.turns import CenterTurns, tenant_share
from deskbroker.errors import CenterError
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import utcnow
from tests.engine.conftest import openstack_center, provisioning_pool
from tests.helpers import Api, built_desktops, tenant_admin_of, wait_until
from tests.tarpit import Tarpit, silent_center, tarpit

WORKERS = 4
# Long enough that the other center's builds finish first even on a loaded CI machine
# (the calls hang until then; passing, the test does not wait for it).
SILENT_TIMEOUT_S = 20.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Every worker open to one tenant: these tests are of one tenant's centers (the
    # tenant's share is tried on its own below).
    return settings.model_copy(
        update={
            "engine_center_workers": 2,
            "engine_tenant_workers": WORKERS,
            "engine_tick_s": 0.05,
        }
    )


@pytest.fixture
def small_engine(ctx: BrokerContext) -> Iterator[Engine]:
    engine = Engine(ctx, workers=WORKERS)
    yield engine
    engine.stop(wait=False)


def _other_center_builds(api: Api, sim: CloudSim, pit: Tarpit) -> None:
    """Another center's pool builds its two desktops well before the silent center's
    calls time out, and each of those calls still hangs on its own connection: the
    silent center never held more than its share of workers."""
    cloud = openstack_center(api, sim)
    pool = provisioning_pool(api, cloud["id"], n=2, m=2)
    wait_until(
        lambda: api.get(f"pools/{pool['id']}/status")["counts"]["available"] >= 2,
        "the other center's builds (they must not wait for the silent center)",
        timeout_s=SILENT_TIMEOUT_S - 2,
        interval_s=0.1,
    )
    assert 1 <= pit.accepted <= 2, pit.accepted


def test_a_silent_center_leaves_workers_for_the_others(
    api: Api, sim: CloudSim, small_engine: Engine
) -> None:
    with tarpit() as pit:
        silent = silent_center(api, pit, timeout_s=SILENT_TIMEOUT_S)
        # Its scan, leak sweep and four builds would take all four workers.
        silent_pool = provisioning_pool(api, silent["id"], n=4, m=4)
        api.patch(f"pools/{silent_pool['id']}", {"name": "silent-pool"})
        small_engine.start()
        time.sleep(1.0)  # the silent center's work is out, waiting on the tarpit
        _other_center_builds(api, sim, pit)


def test_one_tenants_silent_centers_leave_workers_for_the_others(
    api: Api, sim: CloudSim, small_engine: Engine
) -> None:
    """Each center holds at most its share, but a tenant administrator's many silent
    centers would hold every worker between them (the driver families bound their hung
    calls each on its own): one tenant's centers hold at most ``tenant_share`` of the
    workers (here 2 of 4), so the global administrator's builds go on."""
    mallory = tenant_admin_of(api, "b", "mallory")
    small_engine.turns.tenant_share = 2  # two of the four
    with tarpit() as pit:
        for i in range(3):  # scans and leak sweeps: six calls that would hang
            silent_center(mallory, pit, name=f"silent-{i}", timeout_s=SILENT_TIMEOUT_S)
        small_engine.start()
        time.sleep(1.0)  # tenant b's work is out, waiting on the tarpit
        _other_center_builds(api, sim, pit)


def test_a_silent_centers_removals_and_retirements_wait_their_turn(
    api: Api, sim: CloudSim, small_engine: Engine
) -> None:
    """A pool's surplus and an administrator's deletes go to the center's removal job,
    which takes one of the center's turns: with the scan and the leak sweep out on a
    silent cloud, they wait, and the other center's builds have the workers left."""
    with tarpit() as pit:
        silent = silent_center(api, pit, timeout_s=SILENT_TIMEOUT_S)
        doomed = built_desktops(api, silent["id"], 5)
        # Three to retire (the pool wants none), two deleted by the administrator.
        surplus = provisioning_pool(api, silent["id"], n=0, m=0)
        api.patch(f"pools/{surplus['id']}", {"name": "surplus"})
        for desktop_id in doomed[3:]:
            api.delete(f"desktops/{desktop_id}", status=202)
        small_engine.start()
        wait_until(
            lambda: api.get("desktops?power_state=deleting")["total"] == 5,
            "the pool's surplus marked for removal",
            timeout_s=SILENT_TIMEOUT_S - 4,
            interval_s=0.1,
        )
        _other_center_builds(api, sim, pit)
        retired = [e for e in api.get(f"events?kind=retire&pool_id={surplus['id']}")["items"]]
        assert len(retired) == 3


def test_a_removal_pass_ends_at_the_first_call_its_center_does_not_answer(api: Api) -> None:
    """Three desktops to remove on a center that never answers: the pass gives up after
    one deadline, not three (it holds a worker and one of the center's turns meanwhile);
    the job's back-off tries again."""
    with tarpit() as pit:
        silent = silent_center(api, pit, timeout_s=1.0)
        for desktop_id in built_desktops(api, silent["id"], 3):
            api.delete(f"desktops/{desktop_id}", status=202)
        started = time.monotonic()
        with pytest.raises(CenterError, match="did not answer within 1 s") as failed:
            remove_desktops(api.ctx, DriverCache(api.ctx), silent["id"], utcnow())
        took = time.monotonic() - started
        assert failed.value.unanswered
        assert took < 2.5, took
        assert pit.accepted == 1, pit.accepted
        # The rows are the only record of the machines still to terminate.
        refused = api.delete(f"centers/{silent['id']}", status=409)
        assert refused["detail"] == (
            "center silent is still removing 3 desktops; delete it once they are gone"
        )


def test_turns_per_center_and_per_tenant() -> None:
    assert [tenant_share(w) for w in (1, 2, 4, 8, 24, 64)] == [1, 2, 3, 6, 18, 48]
    assert tenant_share(24, 30) == 24 and tenant_share(24, 5) == 5
    turns = CenterTurns(share=2, tenant_share=3)
    assert [turns.take("c1", "a") for _ in range(3)] == [True, True, False]  # the center's
    assert turns.room("c2", "a") == 1
    assert turns.take("c2", "a") and not turns.take("c3", "a")  # the tenant's three
    assert turns.room("c3", "a") == 0 and turns.room("c9", "b") == 2
    assert turns.take("c9", "b")  # another tenant's work still finds a turn
    turns.end("c1", "a")
    assert turns.take("c3", "a")
    turns.count("c9", "b")  # a build claimed within room
    assert turns.room("c9", "b") == 0

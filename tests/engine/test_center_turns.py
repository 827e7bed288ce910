"""One center's work holds at most ``engine_center_workers`` engine workers: a center
whose cloud never answers keeps its scan, sweep and builds waiting their turn, and
another center's builds go on meanwhile on the workers left. One tenant's centers hold
at most ``engine_tenant_workers``, and a quarter of the workers goes only to tenants
with no work running, so two tenants within their shares cannot take them all."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cloudsim.server import CloudSim
from deskbroker.centers.openstack import session as openstack_session
from deskbroker.centers.openstack.overdue import MAX_HELPERS, MAX_PER_OWNER, Helpers
from deskbroker.config import Settings
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.removals import remove_desktops
from deskbroker.engine.runner import Engine
from deskbroker.engine.turns import CenterTurns, tenant_reserve, tenant_share
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


@contextmanager
def _running(engine: Engine) -> Iterator[Engine]:
    engine.start()
    try:
        yield engine
    finally:
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


def test_one_tenants_silent_centers_and_anothers_leave_a_worker_for_a_third(
    api: Api, sim: CloudSim, ctx: BrokerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tenants b and c each within their share (2 of the 4 workers) would hold every
    worker between them, and the global administrator's builds would wait as long as
    their clouds hang. A quarter of the workers (here one) goes only to a tenant with no
    work running: b's centers hold two turns, c's one, and the builds have the last."""
    # The process's cloud helpers are shared with every test's calls: a pool of this
    # test's own, so that their reserve is never what holds b's second call back.
    monkeypatch.setattr(openstack_session, "CLOUD_CALLS", Helpers(MAX_HELPERS, MAX_PER_OWNER))
    ctx.settings = ctx.settings.model_copy(update={"engine_tenant_workers": 2})
    engine = Engine(ctx, workers=WORKERS)
    assert (engine.turns.tenant_share, engine.turns.workers, engine.turns.reserve) == (2, 4, 1)
    with tarpit() as pit, _running(engine):
        for tenant, admin in (("b", "mallory"), ("c", "trudy")):
            hog = tenant_admin_of(api, tenant, admin)
            for i in range(3):  # scans and leak sweeps: six calls each that would hang
                # Past its timeout a hung call asks again on a new connection: twice
                # the others', so that none does while this test counts connections.
                silent_center(hog, pit, name=f"silent-{i}", timeout_s=2 * SILENT_TIMEOUT_S)
        # (Counted as turns: a call may take a while to reach the tarpit on a busy
        # machine, and the turn is what holds the worker.)
        wait_until(lambda: engine.turns.out >= 3, "tenants b and c's work out")
        time.sleep(0.5)  # a fourth turn, were one to be given
        assert engine.turns.out == 3 and pit.accepted <= 3  # the other worker is kept
        cloud = openstack_center(api, sim)
        pool = provisioning_pool(api, cloud["id"], n=2, m=2)
        wait_until(
            lambda: api.get(f"pools/{pool['id']}/status")["counts"]["available"] >= 2,
            "the global administrator's builds, on the worker kept",
            timeout_s=SILENT_TIMEOUT_S - 4,
            interval_s=0.1,
        )
        assert pit.accepted <= 3, pit.accepted


def test_without_a_reserve_two_tenants_take_every_worker() -> None:
    """The turns as they were (nothing in reserve): two tenants within their shares of
    24 workers (18, the default, and 6) hold them all, and a third gets none."""
    turns = CenterTurns(share=24, tenant_share=tenant_share(24), workers=24, reserve=0)
    assert sum(turns.take(f"a{i}", "a") for i in range(20)) == 18
    assert sum(turns.take(f"b{i}", "b") for i in range(20)) == 6
    assert turns.room("c1", "c") == 0 and not turns.take("c1", "c")


def test_a_reserve_keeps_a_turn_for_each_tenant_with_none() -> None:
    """A quarter of the workers (6 of 24) goes only to tenants holding no turn: the two
    hogs are refused once 18 are out, each further tenant still gets one, until the
    reserve is gone; and ``room`` says what ``take`` then gives."""
    turns = CenterTurns(share=24, tenant_share=tenant_share(24), workers=24)
    assert turns.reserve == 6
    assert turns.room("a1", "a") == 18
    assert sum(turns.take(f"a{i}", "a") for i in range(20)) == 18
    assert turns.room("b1", "b") == 1  # one from the reserve, none beyond it
    assert turns.take("b1", "b") and not turns.take("b2", "b")
    assert turns.room("b2", "b") == 0 and turns.room("a9", "a") == 0
    for tenant in "cdefg":  # the third tenant's and the next ones'
        assert turns.room("x", tenant) == 1
        assert turns.take(f"{tenant}1", tenant)
        assert turns.room("x", tenant) == 0 and not turns.take(f"{tenant}2", tenant)
    assert turns.room("h1", "h") == 0 and not turns.take("h1", "h")  # every worker out
    turns.end("d1", "d")  # a tenant's work ends: its place is in reserve again
    assert turns.room("a9", "a") == 0 and not turns.take("a9", "a")
    assert turns.room("h1", "h") == 1 and turns.take("h1", "h")


def test_room_agrees_with_take() -> None:
    """From every state of a small node (4 workers, 1 in reserve, a center's share 2, a
    tenant's 3), ``room`` is how many turns ``take`` gives one after another, and work
    counted within ``room`` keeps to every bound ``take`` does."""
    for a_out in range(4):
        for b_out in range(3):
            if a_out + b_out > 4:
                continue
            for tenant in ("a", "b", "c"):
                turns = CenterTurns(share=2, tenant_share=3, workers=4)
                for i in range(a_out):
                    turns.count(f"a{i}", "a")  # each on a center of its own
                for i in range(b_out):
                    turns.count(f"b{i}", "b")
                room = turns.room("new", tenant)
                given = 0
                while turns.take("new", tenant):
                    given += 1
                assert room == given, (a_out, b_out, tenant, room, given)
                assert turns.room("new", tenant) == 0


def test_the_reserve_never_takes_what_one_tenant_alone_may_hold() -> None:
    """A quarter of the workers by default; a broker that opens more of them to one
    tenant (a single-tenant broker, every worker) keeps only what is left beyond that."""
    sizes = (1, 2, 3, 4, 8, 24)
    assert [tenant_reserve(w, tenant_share(w)) for w in sizes] == [0, 0, 0, 1, 2, 6]
    assert tenant_reserve(24, 5) == 6 and tenant_reserve(24, 22) == 2
    alone = CenterTurns(share=24, tenant_share=24, workers=24, reserve=tenant_reserve(24, 24))
    assert alone.reserve == 0
    assert sum(alone.take(f"a{i}", "a") for i in range(30)) == 24


def test_a_node_too_small_to_share_keeps_nothing_in_reserve() -> None:
    assert [CenterTurns(1, workers=w).reserve for w in (1, 2, 3, 4, 8, 24)] == [0, 0, 0, 1, 2, 6]
    assert CenterTurns(1).reserve == 0  # no workers named: no bound on the whole
    turns = CenterTurns(share=3, tenant_share=3, workers=3)
    assert [turns.take("c1", "a") for _ in range(4)] == [True, True, True, False]
    assert turns.room("c2", "b") == 0 and not turns.take("c2", "b")

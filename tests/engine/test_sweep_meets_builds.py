"""The leak sweep reads what the broker knows, then lists the cloud. A build that creates
and records its instance between the two is not a leak: on a center that reaps its
leaks, it was terminated as one, a brand-new desktop gone under its pool."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from cloudsim.server import CloudSim
from deskbroker.centers.base import CenterDriver, MachineInfo
from deskbroker.engine.builds import TaskStep
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.maintenance import leak_sweep
from deskbroker.engine.provisioner import reconcile_pool
from deskbroker.engine.requests import request_of
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Center, Desktop
from deskbroker.store.tasks import TaskRow, claim_builds
from tests.engine.conftest import openstack_center, provisioning_pool
from tests.helpers import Api


class _ListsLate:
    """The center's own driver, except that ``before_listing`` runs just before the
    sweep's listing: what another engine worker did in that moment."""

    def __init__(self, driver: CenterDriver, before_listing: Callable[[], None]) -> None:
        self._driver = driver
        self._before = before_listing

    def leaked(self, known_external_ids: set[str], *, center_id: str) -> list[MachineInfo]:
        self._before()
        return self._driver.leaked(known_external_ids, center_id=center_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)


class _Drivers(DriverCache):
    def __init__(self, ctx: BrokerContext, before_listing: Callable[[], None]) -> None:
        super().__init__(ctx)
        self._before = before_listing

    def get(self, center: Any) -> CenterDriver:
        return cast(CenterDriver, _ListsLate(super().get(center), self._before))


def _claim(ctx: BrokerContext, center_id: str, owner: str) -> TaskRow:
    """The center's one requested build, claimed as the engine's refill claims it."""
    with ctx.db.connect_write() as conn:
        (task,) = claim_builds(
            conn, center_id, limit=1, most=1, owner=owner, now=datetime.now(UTC), ttl_s=60
        )
    return task


def _live(sim: CloudSim) -> set[str]:
    return {
        str(s["id"])
        for s in sim.servers("demo")
        if s["status"] != "DELETED" and s["task_state"] != "deleting"
    }


def test_a_build_recorded_between_the_read_and_the_listing_is_not_reaped(
    api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext
) -> None:
    center = openstack_center(api, sim, reap_leaks=True)
    pool = provisioning_pool(api, center["id"], n=1, m=1)
    assert reconcile_pool(ctx, engine.drivers, pool["id"], datetime.now(UTC)).endswith(
        "requested 1 more"
    )
    built: list[str] = []

    def build() -> None:
        task = _claim(ctx, center["id"], engine.owner)
        TaskStep(ctx, engine.drivers, task, engine.owner).build()
        with ctx.db.read() as session:
            desktop = session.get(Desktop, task.desktop_id)
            assert desktop is not None
            built.append(desktop.external_id)

    said = leak_sweep(ctx, _Drivers(ctx, build), center["id"], datetime.now(UTC))
    assert said == "0 leaked instance(s)"
    assert built and _live(sim) == set(built)
    assert api.get("events?kind=leak")["items"] == []


def test_a_build_creating_its_instance_during_the_listing_stops_the_sweep(
    api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext
) -> None:
    """The instance is in the cloud, its id not recorded yet: nothing tells it from a
    leak but the task still ``creating``, so the sweep waits for a quieter moment."""
    center = openstack_center(api, sim, reap_leaks=True)
    pool = provisioning_pool(api, center["id"], n=1, m=1)
    reconcile_pool(ctx, engine.drivers, pool["id"], datetime.now(UTC))
    made: list[str] = []

    def create() -> None:
        task = _claim(ctx, center["id"], engine.owner)
        with ctx.db.read() as session:
            row = session.get(Center, center["id"])
            assert row is not None
            session.expunge(row)
        made.append(engine.drivers.get(row).create(request_of(task)))

    said = leak_sweep(ctx, _Drivers(ctx, create), center["id"], datetime.now(UTC))
    assert said == "nothing to sweep"
    assert made and _live(sim) == set(made)
    assert api.get("events?kind=leak")["items"] == []

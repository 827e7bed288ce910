"""Builds keep a worker of a busy engine: the periodic jobs of many pools, each due every
few seconds, took every worker at every tick (they are claimed first), and a requested
build waited for a quiet tick that a loaded machine never had (a pool of the isolation
suite stayed ``building`` for 90 s on a CI run)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from cloudsim.server import CloudSim
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import ProvisioningTask
from tests.engine.conftest import openstack_center, provisioning_pool, run_until
from tests.helpers import Api


@pytest.fixture
def small_engine(ctx: BrokerContext) -> Iterator[Engine]:
    engine = Engine(ctx, workers=2)
    engine.recover()
    yield engine
    engine.stop()


def _states(ctx: BrokerContext) -> list[str]:
    with ctx.db.read() as session:
        return list(session.scalars(select(ProvisioningTask.state)).all())


def test_a_requested_build_starts_while_every_pool_s_jobs_are_due(
    api: Api, sim: CloudSim, small_engine: Engine, ctx: BrokerContext
) -> None:
    center = openstack_center(api, sim)
    for n in range(6):  # pools whose jobs (provisioning, statistics...) are all due now
        api.post("pools", {"name": f"quiet-{n}", "center_ids": [center["id"]]})
    provisioning_pool(api, center["id"], n=1, m=1)
    # Its reconcile requests the build, a tick or a few in: jobs are claimed two at a time.
    run_until(small_engine, lambda: _states(ctx) == ["requested"], tick_s=0)
    # Many jobs are still (or again) due; the next tick starts the build all the same.
    small_engine.run_once()
    assert _states(ctx) != ["requested"]

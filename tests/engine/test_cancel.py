"""Builds nobody wants any more are cancelled before they reach the cloud."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from cloudsim.server import CloudSim
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.provisioner import reconcile_pool
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Desktop, Event, ProvisioningTask
from tests.engine.conftest import openstack_center, provisioning_pool, run_until
from tests.helpers import Api


def _tasks(ctx: BrokerContext) -> dict[str, int]:
    with ctx.db.read() as session:
        rows = session.execute(
            select(ProvisioningTask.state, func.count()).group_by(ProvisioningTask.state)
        ).all()
    return {str(state): int(n) for state, n in rows}


def _placeholders(ctx: BrokerContext) -> int:
    with ctx.db.read() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(Desktop).where(Desktop.external_id.like("task:%"))
            )
            or 0
        )


def _targets(api: Api, pool_id: str, **change: Any) -> None:
    provisioning = api.get(f"pools/{pool_id}")["provisioning"]
    api.patch(f"pools/{pool_id}", {"provisioning": {**provisioning, **change}})


def test_a_dropped_target_cancels_unstarted_builds_and_a_deleted_pool_the_rest(
    ctx: BrokerContext, api: Api, sim: CloudSim
) -> None:
    center = openstack_center(api, sim)
    pool = provisioning_pool(api, center["id"], n=6, m=10)
    drivers = DriverCache(ctx)
    posts = sim.request_count(method="POST", path="/servers")
    # Reconcile alone: the builds are requested, and no engine worker has started one.
    reconcile_pool(ctx, drivers, pool["id"], datetime.now(UTC))
    assert _tasks(ctx) == {"requested": 6}
    assert _placeholders(ctx) == 6

    _targets(api, pool["id"], min_unassigned=2)
    words = reconcile_pool(ctx, drivers, pool["id"], datetime.now(UTC))
    assert "4 unstarted builds cancelled" in words
    assert _tasks(ctx) == {"requested": 2, "cancelled": 4}
    assert _placeholders(ctx) == 2
    assert api.get(f"pools/{pool['id']}/status")["counts"]["provisioning"] == 2
    with ctx.db.read() as session:
        cancelled = session.scalars(
            select(Event.detail).where(Event.kind == "provision.cancelled")
        ).all()
    assert [d["count"] for d in cancelled] == [4]

    # A pool deleted with builds still requested takes them with it.
    api.delete(f"pools/{pool['id']}")
    assert _tasks(ctx) == {"cancelled": 6}
    assert _placeholders(ctx) == 0
    # None of them ever reached the cloud.
    assert sim.request_count(method="POST", path="/servers") == posts


def test_a_build_in_the_cloud_is_not_cancelled(
    ctx: BrokerContext, api: Api, sim: CloudSim, engine: Any
) -> None:
    center = openstack_center(api, sim)
    pool = provisioning_pool(api, center["id"], n=2, m=10)
    run_until(engine, lambda: _tasks(ctx).get("ready", 0) == 2)
    _targets(api, pool["id"], min_unassigned=0, max_total=10)
    reconcile_pool(ctx, DriverCache(ctx), pool["id"], datetime.now(UTC))
    # Built desktops above N are kept (only M retires them); nothing was left to cancel.
    assert _tasks(ctx) == {"ready": 2}
    assert api.get(f"pools/{pool['id']}/status")["counts"]["available"] == 2

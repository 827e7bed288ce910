"""The tenant's desktop quota spans its pools: provisioning stops at it, says so in the
pool status, and two brokers reconciling two pools at once still stop at it."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text

from cloudsim.server import CloudSim
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.provisioner import reconcile_pool
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.services.inventory import scan_center
from deskbroker.store import quotas as quota_store
from deskbroker.store.tables import Desktop
from tests.engine.conftest import openstack_center, run_until
from tests.helpers import Api, wait_until


def pool(api: Api, center_id: str, name: str, n: int, m: int) -> dict[str, Any]:
    return api.post(
        "pools",
        {
            "name": name,
            "center_ids": [center_id],
            # Each pool holds only its own desktops, so the quota is what they share.
            "filters": [{"attribute": "name", "op": "begins_with", "value": f"{name}-"}],
            "provisioning": {
                "enabled": True,
                "min_unassigned": n,
                "max_total": m,
                "parameters": {
                    "name_template": f"{name}-{{SEQUENCE:3}}",
                    "image": "cirros-0.6.2-x86_64-disk",
                    "flavor": "m1.tiny",
                },
            },
        },
    )


def quota(api: Api, desktops: int | None) -> None:
    tenant = api.get("tenants?name=default")["items"][0]["id"]
    api.patch(f"tenants/{tenant}", {"quota_desktops": desktops})


def desktops(ctx: BrokerContext) -> int:
    with ctx.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Desktop)) or 0)


def test_provisioning_stops_at_the_tenant_quota_across_pools(
    api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext
) -> None:
    center = openstack_center(api, sim)
    quota(api, 5)
    a = pool(api, center["id"], "a", 4, 10)
    b = pool(api, center["id"], "b", 4, 10)

    def short() -> str:
        words = [api.get(f"pools/{p['id']}/status")["provisioning"] for p in (a, b)]
        return next((w for w in words if "fewer built" in w), "")

    # One pool got its four, the other one: the tenant's fifth.
    run_until(engine, lambda: desktops(ctx) == 5 and bool(short()))
    assert short().endswith("; tenant quota: 5 of 5 desktops, so 3 fewer built than the pool wants")

    def live_servers() -> int:
        return len([s for s in sim.servers("demo") if s["status"] != "DELETED"])

    # The five rows come first; their servers follow (slower on a loaded machine).
    run_until(engine, lambda: live_servers() == 5)
    stop = time.monotonic() + 2  # several provisioning intervals: nothing more is built
    while time.monotonic() < stop:
        engine.run_once()
        time.sleep(0.05)
    assert desktops(ctx) == 5
    assert live_servers() == 5
    totals = sorted(api.get(f"pools/{p['id']}/status")["counts"]["total"] for p in (a, b))
    assert totals == [1, 4]
    for p in (a, b):
        status = api.get(f"pools/{p['id']}/status")
        assert status["summary"].endswith("; tenant quota: 5 of 5 desktops")
        assert status["tenant_desktops"] == {"limit": 5, "used": 5}
    # Raising the quota lets the pools grow to what they want.
    quota(api, None)
    run_until(engine, lambda: desktops(ctx) == 8)


def test_two_brokers_reconciling_two_pools_at_once_stop_at_the_quota(
    api: Api, sim: CloudSim, ctx: BrokerContext
) -> None:
    center = openstack_center(api, sim)
    quota(api, 6)
    pools = [pool(api, center["id"], name, 6, 6)["id"] for name in ("a", "b")]
    brokers = [BrokerContext.from_settings(ctx.settings) for _ in pools]
    start = threading.Barrier(len(pools))
    now = datetime.now(UTC)

    def reconcile(n: int) -> None:
        start.wait()
        reconcile_pool(brokers[n], DriverCache(brokers[n]), pools[n], now)

    threads = [threading.Thread(target=reconcile, args=(n,)) for n in range(len(pools))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for broker in brokers:
        broker.db.dispose()
    assert desktops(ctx) == 6
    assert api.get("quota")["desktops"] == {"limit": 6, "used": 6}


def test_a_scan_and_a_build_holding_the_tenant_do_not_deadlock(
    api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext
) -> None:
    # A build locks the tenant's row (the quota), then inserts a desktop of the center;
    # a scan locks the center's row, then the tenant's. The scan's lock of the center
    # must leave the insert's foreign-key check through, or each waits for the other
    # (PostgreSQL broke such a deadlock in CI by failing the scan).
    center = openstack_center(api, sim)
    quota(api, 5)
    tenant = api.get("tenants?name=default")["items"][0]["id"]
    building, done = threading.Event(), threading.Event()
    failures: list[BaseException] = []
    reports: list[Any] = []

    def scan() -> None:
        building.wait(10)
        try:
            reports.append(scan_center(ctx, center["id"], driver_of=engine.drivers.get))
        except BaseException as exc:
            failures.append(exc)

    def scan_waits_for_the_tenant() -> bool:
        if not ctx.db.is_postgres:
            # One writer at a time: the scan's unit waits for the build's as a whole.
            time.sleep(0.5)
            return True
        with ctx.db.read() as session:
            waiting = session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database() "
                    "AND query ILIKE '%FROM tenants%FOR NO KEY UPDATE%'"
                )
            )
        return bool(waiting)

    scanner = threading.Thread(target=scan)
    scanner.start()
    try:
        with ctx.db.write() as session:
            quota_store.read(session, tenant, lock=True)
            building.set()
            wait_until(scan_waits_for_the_tenant, "the scan to wait for the tenant's row")
            session.add(
                Desktop(tenant_id=tenant, center_id=center["id"], external_id="x-1", name="x-1")
            )
            session.flush()
        done.set()
    finally:
        building.set()
        scanner.join(30)
    assert done.is_set() and not scanner.is_alive()
    assert not failures, failures
    assert reports and reports[0] is not None

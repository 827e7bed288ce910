"""A full scan's listing is a photograph taken when the scan began: a desktop whose build
reached the cloud after that moment is not in it, and must not be taken for gone. Were
it removed, its instance would run on in the cloud with no desktop row: a machine nobody
hands out, watches or pays attention to, and the pool would build another in its place.
And a scan recording while a build is handed over leaves the desktop's power state to
the hand-over, rather than writing back the ``building`` it read."""

from __future__ import annotations

import time

from pytest import MonkeyPatch
from sqlalchemy import select, update

from cloudsim.server import CloudSim
from deskbroker.engine.runner import Engine
from deskbroker.services import inventory
from deskbroker.services.context import BrokerContext
from deskbroker.store import desktop_sync
from deskbroker.store.desktop_sync import CLOCK_SKEW
from deskbroker.store.tables import Center, Desktop, ProvisioningTask
from tests.engine.conftest import openstack_center, provisioning_pool, run_until
from tests.engine.test_scan_shortfall import _delete_in_the_cloud
from tests.helpers import Api
from tests.races import Seam, while_held


def _running(ctx: BrokerContext) -> set[str]:
    with ctx.db.read() as session:
        return set(
            session.scalars(select(Desktop.name).where(Desktop.power_state == "running")).all()
        )


def _live_servers(sim: CloudSim) -> set[str]:
    return {s["name"] for s in sim.servers("demo") if s["status"] != "DELETED"}


def _look(ctx: BrokerContext, center_id: str) -> inventory.Listing:
    """The network half of a full scan, as ``scan_center`` takes it."""
    with ctx.db.read() as session:
        center = session.get(Center, center_id)
        assert center is not None
        session.expunge(center)
    return inventory.look(ctx.drivers.get(center), center, full=True)


def _record(ctx: BrokerContext, center_id: str, listing: inventory.Listing) -> inventory.ScanReport:
    """The database half, as ``scan_center`` records it (no other scan ran in between)."""
    with ctx.db.write() as session:
        center = session.get(Center, center_id, with_for_update={"key_share": True})
        assert center is not None
        return inventory.record(session, ctx, center, listing)


def test_a_listing_taken_before_a_build_reached_the_cloud_keeps_its_desktop(
    api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext
) -> None:
    center = openstack_center(api, sim)
    provisioning = {
        "enabled": True,
        "min_unassigned": 3,
        "max_total": 4,
        "parameters": {
            "name_template": "vdi-{SEQUENCE:3}",
            "image": "cirros-0.6.2-x86_64-disk",
            "flavor": "m1.tiny",
        },
    }
    pool = provisioning_pool(api, center["id"], n=3, m=4)
    run_until(engine, lambda: len(_running(ctx)) == 3)
    listing = _look(ctx, center["id"])
    assert listing.changes is not None and len(listing.changes.machines) == 3

    # While that scan would be recording, the pool grows and its fourth desktop is built.
    api.patch(f"pools/{pool['id']}", {"provisioning": {**provisioning, "min_unassigned": 4}})
    run_until(engine, lambda: len(_running(ctx)) == 4)
    built = _running(ctx)

    report = _record(ctx, center["id"], listing)
    assert report.status == "ok", report.message
    assert report.removed == []
    assert _running(ctx) == built
    assert _live_servers(sim) == built

    # The next look sees the fourth machine, and a machine really gone still goes once
    # its build is older than the listing by more than two brokers' clocks may differ
    # (and a second full look misses it too: one look of a cloud removes nothing).
    time.sleep(CLOCK_SKEW.total_seconds())
    gone = sorted(built)[0]
    _delete_in_the_cloud(sim, [next(s["id"] for s in sim.servers("demo") if s["name"] == gone)])
    report = _record(ctx, center["id"], _look(ctx, center["id"]))
    assert report.removed == [] and "1 unseen desktop kept" in report.message, report.message
    report = _record(ctx, center["id"], _look(ctx, center["id"]))
    assert report.removed == [gone]
    assert _running(ctx) == built - {gone}


def test_a_scan_recording_while_a_build_is_handed_over_leaves_its_power_state_alone(
    api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext, monkeypatch: MonkeyPatch
) -> None:
    center = openstack_center(api, sim)
    provisioning_pool(api, center["id"], n=1, m=1)
    run_until(engine, lambda: len(_running(ctx)) == 1)
    # Back to the moment before the hand-over: the cloud has the machine running, the
    # broker still has it building, its task waiting.
    with ctx.db.write() as session:
        desktop = session.scalars(select(Desktop)).one()
        task = session.scalars(select(ProvisioningTask)).one()
        desktop.power_state, desktop.availability = "building", "unavailable"
        task.state = "waiting"
        desktop_id, task_id = desktop.id, task.id
    listing = _look(ctx, center["id"])

    # The scan records what it saw, and stops just after it read which desktops are
    # being built (this one is)...
    seam = Seam()
    seam.after(monkeypatch, desktop_sync, "_being_built")

    # ... while the engine hands the desktop over (what ``hand_over`` writes).
    def hand_over() -> None:
        with ctx.db.write() as session:
            session.execute(
                update(Desktop)
                .where(Desktop.id == desktop_id)
                .values(power_state="running", availability="available")
            )
            session.execute(
                update(ProvisioningTask).where(ProvisioningTask.id == task_id).values(state="ready")
            )

    # On PostgreSQL the hand-over commits before the scan writes.
    while_held(
        seam,
        lambda: _record(ctx, center["id"], listing),
        hand_over,
        other_ends_first=ctx.db.is_postgres,
    )
    # Not ``building`` written back over it: that kept it out of the claim until a full
    # scan, as a free desktop no one could be given.
    with ctx.db.read() as session:
        row = session.get(Desktop, desktop_id)
        assert row is not None
        assert (row.power_state, row.availability) == ("running", "available")

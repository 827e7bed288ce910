"""Users' data volumes under races: one volume per user and center however many desktops
they hold or runs there are, a reservation before the cloud is asked, and a desktop that
changes hands while its volume is attached ending with the volume off it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from cloudsim.server import CloudSim
from deskbroker.engine import volumes
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.provisioner import reconcile_pool
from deskbroker.engine.runner import Engine
from deskbroker.store import volumes as store
from deskbroker.store.tables import Center, Desktop, UserVolume
from tests.engine.conftest import openstack_center, provisioning_pool, run_until
from tests.engine.test_provisioning import _driver, _status
from tests.helpers import Api, wait_until

VOLUMES_POST = r"/volumes$"
ATTACH_POST = r"os-volume_attachments$"


def _pool_with_volumes(api: Api, sim: CloudSim, *, desktops: int) -> tuple[str, str]:
    """A provisioned pool with 2 GB data volumes whose policy hands a user ``desktops``
    desktops, and the user "roamer"; returns the center's and the pool's ids."""
    center = openstack_center(api, sim)
    pool = provisioning_pool(api, center["id"], n=2, m=3)
    provisioning = api.get(f"pools/{pool['id']}")["provisioning"]
    provisioning["parameters"]["data_volume_gb"] = 2
    api.patch(f"pools/{pool['id']}", {"provisioning": provisioning})
    entry = {"pool_id": pool["id"], "desktops": desktops}
    policy = api.post(
        "policies", {"name": "auto", "max_desktops_per_user": desktops, "entries": [entry]}
    )
    api.post("assignment-rules", {"identity_source_id": api.source_id(), "policy_id": policy["id"]})
    api.post(
        "users",
        {"identity_source_id": api.source_id(), "username": "roamer", "password": "password-1"},
    )
    return center["id"], pool["id"]


def _attachments(api: Api, sim: CloudSim, center_id: str) -> dict[str, list[str]]:
    """Each server's attached volumes, as the cloud has them."""
    conn = _driver(center_id, api)
    found: dict[str, list[str]] = {}
    for server in sim.servers("demo"):
        body = conn.session.compute_get(f"/servers/{server['id']}/os-volume_attachments")
        found[server["id"]] = [a["volumeId"] for a in body["volumeAttachments"]]
    return found


def _wait_available(api: Api, center_id: str, volume_id: str) -> None:
    block_storage = _driver(center_id, api).session.connection().block_storage
    wait_until(
        lambda: (
            block_storage.get(f"/volumes/{volume_id}").json()["volume"]["status"] == "available"
        ),
        "the volume made",
    )


def _rows(api: Api) -> list[UserVolume]:
    with api.ctx.db.read() as session:
        return list(session.scalars(select(UserVolume)).all())


def _follow(api: Api, center_id: str, pool_id: str) -> Callable[[], int]:
    """One volume pass over the pool, as its provisioning job makes it, each on an
    engine of its own (the runs at once stand for several brokers': they share no
    center turns, so none is refused one)."""
    with api.ctx.db.read() as session:
        center = session.get(Center, center_id)
        assert center is not None
        session.expunge(center)

    def run() -> int:
        return volumes.follow_users(api.ctx, DriverCache(api.ctx), pool_id, center, 2)

    return run


def _at_once(*runs: Callable[[], Any]) -> list[Any]:
    """Run each in its own thread at the same moment; their results (or exceptions)."""
    results: list[Any] = [None] * len(runs)

    def call(i: int) -> None:
        try:
            results[i] = runs[i]()
        except Exception as exc:  # the test asserts there were none
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(runs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_a_user_holding_two_desktops_gets_one_volume(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    center_id, pool_id = _pool_with_volumes(api, sim, desktops=2)
    run_until(engine, lambda: _status(api, pool_id)["available"] == 2)
    offers = api.login("roamer", "password-1")["offers"]
    servers = {api.get(f"desktops/{o['desktop']['id']}")["external_id"] for o in offers}
    assert len(servers) == 2

    reconcile_pool(api.ctx, DriverCache(api.ctx), pool_id, datetime.now(UTC))  # no IntegrityError
    run_until(engine, lambda: any(_attachments(api, sim, center_id).get(s) for s in servers))
    reconcile_pool(api.ctx, DriverCache(api.ctx), pool_id, datetime.now(UTC))

    assert sim.request_count(method="POST", path=VOLUMES_POST) == 1
    [row] = _rows(api)
    on_desktops = [v for s in servers for v in _attachments(api, sim, center_id)[s]]
    assert on_desktops == [row.volume_id]
    assert row.attached_to in servers


def test_runs_at_once_make_one_volume_and_attach_it_once(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    center_id, pool_id = _pool_with_volumes(api, sim, desktops=1)
    run_until(engine, lambda: _status(api, pool_id)["available"] == 2)
    [offer] = api.login("roamer", "password-1")["offers"]
    server = api.get(f"desktops/{offer['desktop']['id']}")["external_id"]
    follow = _follow(api, center_id, pool_id)
    slow = sim.add_latency(0.5, method="POST", path=VOLUMES_POST)

    assert _at_once(follow, follow, follow) == [0, 0, 0]
    sim.remove_rule(slow)
    assert sim.request_count(method="POST", path=VOLUMES_POST) == 1
    [row] = _rows(api)
    assert not store.is_pending(row.volume_id)

    run_until(engine, lambda: _attachments(api, sim, center_id)[server] == [row.volume_id])
    assert sum(_at_once(follow, follow)) == 0  # attached already: nothing more to do
    assert len(api.get("events?kind=volume.attach")["items"]) == 1
    assert len(api.get("events?kind=volume.create")["items"]) == 1


def test_a_desktop_that_changes_hands_during_the_attach_loses_the_volume(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    center_id, pool_id = _pool_with_volumes(api, sim, desktops=1)
    run_until(engine, lambda: _status(api, pool_id)["available"] == 2)
    desktop = api.login("roamer", "password-1")["offers"][0]["desktop"]
    server = api.get(f"desktops/{desktop['id']}")["external_id"]
    follow = _follow(api, center_id, pool_id)
    follow()  # makes the volume
    [row] = _rows(api)
    _wait_available(api, center_id, row.volume_id)

    # No engine ticks from here: only this pass attaches, and the user lets go meanwhile.
    # The cloud logs a request once answered: the attach is known to be in flight only
    # by time, so the answer takes 6 s and the desktop is released 1 s in (3 s were not
    # enough once in CI: the release, on a loaded machine, came after the answer).
    slow = sim.add_latency(6.0, method="POST", path=ATTACH_POST)
    attaching = threading.Thread(target=follow)
    began = time.monotonic()
    attaching.start()
    time.sleep(1.0)
    api.delete(f"assignments/{desktop['id']}")
    released_at = time.monotonic() - began
    attaching.join(30)
    sim.remove_rule(slow)
    assert released_at < 5.5, (
        f"the release ended {released_at:.1f} s in, not while the attach was in flight: "
        "the machine is too loaded for this test's timing"
    )

    assert _attachments(api, sim, center_id)[server] == []
    [after] = _rows(api)
    assert (after.volume_id, after.desktop_id, after.attached_to) == (row.volume_id, None, None)
    kinds = [e["kind"] for e in api.get("events?limit=100")["items"]]
    assert "volume.attach" in kinds and "volume.detach" in kinds


def test_a_refused_volume_frees_its_reservation(api: Api, sim: CloudSim, engine: Engine) -> None:
    center_id, pool_id = _pool_with_volumes(api, sim, desktops=1)
    run_until(engine, lambda: _status(api, pool_id)["available"] == 2)
    api.login("roamer", "password-1")
    follow = _follow(api, center_id, pool_id)
    sim.inject_fault("500", method="POST", path=VOLUMES_POST, times=None)
    follow()
    sim.clear_faults()
    assert _rows(api) == []
    [failed] = api.get("events?kind=volume.create_failed")["items"]
    assert failed["detail"]["error"]

    follow()
    [row] = _rows(api)
    assert not store.is_pending(row.volume_id)


def test_an_abandoned_reservation_is_taken_over_a_fresh_one_is_left(
    api: Api, sim: CloudSim, engine: Engine
) -> None:
    center_id, pool_id = _pool_with_volumes(api, sim, desktops=1)
    run_until(engine, lambda: _status(api, pool_id)["available"] == 2)
    desktop = api.login("roamer", "password-1")["offers"][0]["desktop"]
    follow = _follow(api, center_id, pool_id)
    # A run that reserved the volume and stopped before it asked (or recorded) the cloud.
    with api.ctx.db.write() as session:
        held = session.get(Desktop, desktop["id"])
        assert held is not None and held.assigned_user_id is not None
        row = store.reserve(
            session,
            tenant_id=held.tenant_id,
            user_id=held.assigned_user_id,
            center_id=center_id,
            token="stopped",
            size_gb=2,
        )
        assert row is not None

    follow()  # still fresh: that run may yet record it
    assert sim.request_count(method="POST", path=VOLUMES_POST) == 0

    with api.ctx.db.write() as session:
        old = datetime.now(UTC) - volumes.ABANDONED_AFTER - timedelta(minutes=1)
        session.execute(update(UserVolume).where(UserVolume.id == row).values(updated_at=old))
    follow()
    assert sim.request_count(method="POST", path=VOLUMES_POST) == 1
    [made] = _rows(api)
    assert made.id == row and not store.is_pending(made.volume_id)

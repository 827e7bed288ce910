"""Users' data volumes under races: one volume per user and center however many desktops
they hold or runs there are, a reservation before the cloud is asked, and a desktop that
changes hands while its volume is attached ending with the volume off it.

The last tests hold one unit between its read of a row and its write (``tests/races.py``)
while another commits: on PostgreSQL each statement sees what had committed when it
began, so a check read plainly let the write undo the other's (a take-over, a release,
another run's attachment). On SQLite the one writer serialises the two; they hold there
too."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import func, select, update

from cloudsim.server import CloudSim
from deskbroker.centers.base import CenterDriver
from deskbroker.engine import volumes
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.provisioner import reconcile_pool
from deskbroker.engine.runner import Engine
from deskbroker.store import claims
from deskbroker.store import volumes as store
from deskbroker.store.tables import Center, Desktop, Event, User, UserVolume
from tests.desktop_agent import assigned_desktop
from tests.engine.conftest import openstack_center, provisioning_pool, run_until
from tests.engine.test_provisioning import _driver, _status
from tests.helpers import Api, wait_until
from tests.races import Seam, while_held

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


class _Held:
    """user0 and their volume's row on a static center (no cloud: the units under test
    call none), and the desktops of the center by name."""

    def __init__(self, api: Api, *, volume_id: str, holds: tuple[str, ...] = ()) -> None:
        self.api = api
        ids = api.seed_pool(2, users=1)
        self.center_id = ids["center"]
        with api.ctx.db.write() as session:
            user = session.scalars(select(User).where(User.username == "user0")).one()
            self.user_id, self.tenant_id = user.id, user.tenant_id
            self.desktops = {d.name: d for d in session.scalars(select(Desktop)).all() if d.name}
            for name in holds:
                held = self.desktops[name]
                held.assigned_user_id, held.assigned_at = user.id, datetime.now(UTC)
            row = UserVolume(
                tenant_id=user.tenant_id,
                user_id=user.id,
                center_id=self.center_id,
                volume_id=volume_id,
                size_gb=2,
            )
            session.add(row)
            session.flush()
            self.row_id = row.id
            for desktop in self.desktops.values():
                session.expunge(desktop)

    def want(self, name: str, volume_id: str = "vol-1") -> volumes._Wanted:
        """The attach pass's view of user0's volume wanted on desktop ``name``."""
        desktop = self.desktops[name]
        return volumes._Wanted(
            self.center_id,
            desktop.id,
            desktop.external_id,
            self.user_id,
            self.tenant_id,
            self.row_id,
            volume_id,
            None,
            "data-user0",
        )

    def stale(self, name: str, volume_id: str = "vol-1") -> volumes._Stale:
        """The recorded attachment of user0's volume to desktop ``name``."""
        desktop = self.desktops[name]
        return volumes._Stale(self.row_id, volume_id, desktop.external_id, desktop.id)

    def attach(self, name: str) -> None:
        """Record the volume as attached to desktop ``name``."""
        desktop = self.desktops[name]
        with self.api.ctx.db.write() as session:
            session.execute(
                update(UserVolume)
                .where(UserVolume.id == self.row_id)
                .values(desktop_id=desktop.id, attached_to=desktop.external_id)
            )

    def row(self) -> UserVolume | None:
        with self.api.ctx.db.read() as session:
            return session.get(UserVolume, self.row_id)

    def events(self, kind: str) -> int:
        with self.api.ctx.db.read() as session:
            return session.scalars(
                select(func.count()).select_from(Event).where(Event.kind == kind)
            ).one()


class _Detached:
    """A center that detaches anything asked (the units under test only record)."""

    def detach_volume(self, external_id: str, volume_id: str) -> None:
        return None


def test_a_volume_recorded_after_its_reservation_was_taken_over_is_not_recorded(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose reservation another run took over (judged abandoned) while it was
    between its read of the row and its write recorded its volume over the take-over:
    the taker, told it held the reservation, found it gone when its own volume was made.
    Now the record is one conditional statement: the take-over waits for it and finds
    the reservation moved on, or commits first and the record finds it no longer its."""
    user = _Held(api, volume_id=store.PENDING + "first")
    seam = Seam()
    seam.after(monkeypatch, store, "made")
    recorded: list[bool] = []
    taken: list[bool] = []

    def record() -> None:
        with api.ctx.db.write() as session:
            recorded.append(store.made(session, user.row_id, "first", "vol-first") is not None)

    def take_over() -> None:
        with api.ctx.db.write() as session:
            taken.append(store.take_over(session, user.row_id, store.PENDING + "first", "second"))

    while_held(seam, record, take_over, other_ends_first=False, other_waits_s=1)
    assert (recorded, taken) == ([True], [False])
    row = user.row()
    assert row is not None and row.volume_id == "vol-first"


def test_a_refused_volume_does_not_drop_the_reservation_another_run_took_over(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a reservation dropped when the cloud refused its volume: the drop
    deleted the row another run had just taken over (and was asking the cloud for)."""
    user = _Held(api, volume_id=store.PENDING + "first")
    seam = Seam()
    seam.after(monkeypatch, store, "release")
    released: list[bool] = []
    taken: list[bool] = []

    def release() -> None:
        with api.ctx.db.write() as session:
            released.append(store.release(session, user.row_id, "first"))

    def take_over() -> None:
        with api.ctx.db.write() as session:
            taken.append(store.take_over(session, user.row_id, store.PENDING + "first", "second"))

    while_held(seam, release, take_over, other_ends_first=False, other_waits_s=1)
    assert (released, taken) == ([True], [False])
    assert user.row() is None


def test_two_runs_recording_one_volume_on_two_desktops_record_it_once(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two attach passes that each read the volume unattached (its user holding two
    desktops, each pass judging another the first) both recorded theirs, the later over
    the earlier: the earlier's attachment, recorded nowhere, was never undone. Now the
    row is locked before it is checked: the later pass finds the volume on the other
    desktop and takes its own attachment off."""
    user = _Held(api, volume_id="vol-1", holds=("lab-000", "lab-001"))
    seam = Seam()
    seam.after(monkeypatch, store, "lock_row")
    results: dict[str, volumes._Stale | None] = {}

    def first() -> None:
        results["first"] = volumes._record_attach(api.ctx, user.want("lab-000"), "vol-1")

    def second() -> None:
        results["second"] = volumes._record_attach(api.ctx, user.want("lab-001"), "vol-1")

    while_held(seam, first, second, other_ends_first=False, other_waits_s=1)
    second_desktop = user.desktops["lab-001"]
    assert results == {
        "first": None,
        "second": volumes._Stale(None, "vol-1", second_desktop.external_id, second_desktop.id),
    }
    row = user.row()
    assert row is not None and row.desktop_id == user.desktops["lab-000"].id
    assert user.events("volume.attach") == 1


def test_an_attachment_recorded_while_its_desktop_is_released_comes_off_at_once(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attach pass that read the desktop's holder while a release had unassigned it
    but not yet committed (its unit goes on: the event, the pool's interval, the queues)
    read the holder being taken away and kept the volume on the desktop until the next
    pass, maybe in the next holder's hands. The holder is now read with the desktop's
    row share-locked: the pass waits for the release and takes the volume off."""
    user = _Held(api, volume_id="vol-1")
    desktop = assigned_desktop(api, "user0")
    name = next(n for n, d in user.desktops.items() if d.id == desktop)
    seam = Seam(first_only=True)  # the app runs the release on a thread of its own
    seam.after(monkeypatch, claims, "unassign")
    results: list[volumes._Stale | None] = []

    def release() -> None:
        api.delete(f"assignments/{desktop}")

    def record() -> None:
        results.append(volumes._record_attach(api.ctx, user.want(name), "vol-1"))

    while_held(seam, release, record, other_ends_first=False, other_waits_s=1)
    # Recorded, to be detached at once by the pass (and found by the next should that fail).
    assert results == [user.stale(name)]
    row = user.row()
    assert row is not None and row.desktop_id == desktop


def test_a_detach_does_not_clear_an_attachment_recorded_after_it_read_the_row(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A detach that read the row (attached to a desktop its user let go) while another
    pass detached it too and recorded it on the user's new desktop cleared that record:
    the volume stayed on the new desktop with its row saying it was on none. Locked, the
    row is read as the other pass left it, and the detach writes nothing."""
    user = _Held(api, volume_id="vol-1", holds=("lab-001",))
    user.attach("lab-000")
    center = cast(CenterDriver, _Detached())
    seam = Seam()
    seam.after(monkeypatch, store, "lock_row")

    def detach() -> None:
        volumes._detach(api.ctx, center, user.stale("lab-000"))

    attached: list[volumes._Stale | None] = []

    def detach_and_attach() -> None:
        volumes._detach(api.ctx, center, user.stale("lab-000"))
        attached.append(volumes._record_attach(api.ctx, user.want("lab-001"), "vol-1"))

    while_held(seam, detach, detach_and_attach, other_ends_first=False, other_waits_s=1)
    assert attached == [None]
    row = user.row()
    assert row is not None
    assert (row.desktop_id, row.attached_to) == (
        user.desktops["lab-001"].id,
        user.desktops["lab-001"].external_id,
    )
    assert user.events("volume.detach") == 1

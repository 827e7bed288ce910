"""A membership refresh that read a tenant's desktops just before a build committed its
desktop (and that desktop's place in its pool) keeps that place: on PostgreSQL each
statement sees what had committed when it began, and the refresh's read of the members
came after the build. Dropping it took the new desktop out of its pool, and the
provisioner, counting it no more, built another (seen as a pool of 7 or 8 where 6 were
wanted in ``test_provisioning.py::test_schedule_window_changes_targets``). Likewise a
finished build's placement keeps the desktop's place in a pool made after it read the
pools. On SQLite the one writer serialises them; the tests hold there too."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select

from deskbroker.services.context import BrokerContext
from deskbroker.store import membership
from deskbroker.store.tables import Center, Desktop, PoolMember
from tests.engine.test_pool_guard_race import PausedAfterGuard
from tests.helpers import Api
from tests.races import Seam, while_held


@pytest.fixture
def other_broker(ctx: BrokerContext) -> Iterator[BrokerContext]:
    """A second broker on the same database: its own engine and connections."""
    other = BrokerContext.from_settings(ctx.settings)
    yield other
    other.db.dispose()


def _members(ctx: BrokerContext, pool_id: str) -> set[str]:
    with ctx.db.read() as session:
        return set(
            session.scalars(
                select(Desktop.name)
                .join(PoolMember, PoolMember.desktop_id == Desktop.id)
                .where(PoolMember.pool_id == pool_id)
            ).all()
        )


def test_a_refresh_keeps_the_place_of_a_desktop_built_after_it_read_the_desktops(
    api: Api, other_broker: BrokerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = api.seed_pool(2)
    pool_id, center_id = ids["pool"], ids["center"]
    assert _members(api.ctx, pool_id) == {"lab-000", "lab-001"}
    with api.ctx.db.read() as session:
        center = session.get(Center, center_id)
        assert center is not None
        tenant = center.tenant_id

    paused = PausedAfterGuard(monkeypatch)

    def scan_on_the_other_broker() -> None:
        # What a scan that saw a change writes last: the tenant's pools recomputed.
        with other_broker.db.write() as session:
            membership.refresh(session, tenant)

    def build_on_this_broker() -> None:
        # As the provisioner requests a build: the desktop and its place in the pool,
        # in one commit.
        with api.ctx.db.write() as session:
            desktop = Desktop(
                tenant_id=tenant,
                center_id=center_id,
                external_id="task:t-1",
                name="lab-new",
                power_state="building",
                availability="unavailable",
                deletable=True,
                attributes={"meta.deskbroker_pool": pool_id},
            )
            session.add(desktop)
            session.flush()
            session.add(PoolMember(pool_id=pool_id, desktop_id=desktop.id))

    scan = threading.Thread(target=scan_on_the_other_broker)
    paused.thread = scan
    scan.start()
    # The refresh has read the desktops (and the guard), not yet the members.
    assert paused.read.wait(30)
    build = threading.Thread(target=build_on_this_broker)
    build.start()
    if api.ctx.db.is_postgres:
        # The build commits while the refresh is between its two reads.
        build.join(30)
        assert not build.is_alive()
    # (On SQLite one writer at a time: the build waits for the refresh, then commits.)
    paused.go_on.set()
    scan.join(30)
    build.join(30)
    assert not scan.is_alive() and not build.is_alive()
    assert _members(api.ctx, pool_id) == {"lab-000", "lab-001", "lab-new"}


def test_a_refresh_still_drops_the_places_of_deleted_desktops(api: Api) -> None:
    ids = api.seed_pool(2)
    pool_id = ids["pool"]
    with api.ctx.db.write() as session:
        row = session.scalars(select(Desktop).where(Desktop.name == "lab-001")).one()
        row.power_state = "deleted"
        tenant = row.tenant_id
    with api.ctx.db.write() as session:
        membership.refresh(session, tenant)
    assert _members(api.ctx, pool_id) == {"lab-000"}


def test_a_built_desktops_placement_keeps_its_place_in_a_pool_made_meanwhile(
    api: Api, other_broker: BrokerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = api.seed_pool(2)
    with api.ctx.db.read() as session:
        desktop, tenant = session.execute(
            select(Desktop.id, Desktop.tenant_id).where(Desktop.name == "lab-000")
        ).one()
    paused = PausedAfterGuard(monkeypatch)

    def hand_over_on_the_other_broker() -> None:
        # What a finished build's hand-over writes last: its desktop placed in its pools.
        with other_broker.db.connect_write() as conn:
            membership.refresh_desktops(conn, tenant, [desktop])

    placing = threading.Thread(target=hand_over_on_the_other_broker)
    paused.thread = placing
    placing.start()
    # The placement has read the tenant's pools, not yet the desktop's places.
    assert paused.read.wait(30)
    made: dict[str, str] = {}
    pool = threading.Thread(
        target=lambda: made.update(
            api.post("pools", {"name": "more", "center_ids": [ids["center"]]})
        )
    )
    pool.start()
    # The new pool waits for the placement (the tenant's membership is held on
    # PostgreSQL, the one writer on SQLite): its own refresh then sees the placement.
    pool.join(1)
    assert pool.is_alive()
    paused.go_on.set()
    placing.join(30)
    pool.join(30)
    assert not placing.is_alive() and not pool.is_alive()
    assert _members(api.ctx, made["id"]) == {"lab-000", "lab-001"}


def _tenant_and_pool(api: Api) -> tuple[str, dict[str, str]]:
    ids = api.seed_pool(2)
    with api.ctx.db.read() as session:
        tenant = session.scalars(select(Center.tenant_id).where(Center.id == ids["center"])).one()
    return tenant, ids


def test_an_administrators_pool_change_is_not_undone_by_a_refresh_that_read_before_it(
    api: Api, other_broker: BrokerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan's refresh that read the pools before an administrator narrowed one to a
    list of desktops, and wrote after the change committed, wrote the old definition's
    places back (on PostgreSQL): the change seemed not to take until the next scan. The
    change now waits for the refresh, and its own refresh reads what the scan wrote."""
    tenant, ids = _tenant_and_pool(api)
    with api.ctx.db.read() as session:
        first = session.scalars(select(Desktop.id).where(Desktop.name == "lab-000")).one()
    seam = Seam()
    seam.after(monkeypatch, membership, "guard")  # the pools and desktops read

    def scan_on_the_other_broker() -> None:
        with other_broker.db.write() as session:
            membership.refresh(session, tenant)

    def narrow() -> None:
        api.patch(f"pools/{ids['pool']}", {"center_ids": [], "desktop_ids": [first]})

    while_held(seam, scan_on_the_other_broker, narrow, other_ends_first=False, other_waits_s=1)
    assert _members(api.ctx, ids["pool"]) == {"lab-000"}


def test_two_refreshes_placing_one_new_desktop_both_commit(
    api: Api, other_broker: BrokerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two refreshes of one tenant that both found a new desktop of a pool's center
    without its place: on PostgreSQL both inserted it, and the later unit failed on the
    duplicate (a scan's record lost, or an administrator's write answered 500). The
    later one now reads the places after the first committed and has nothing to add."""
    tenant, ids = _tenant_and_pool(api)
    with api.ctx.db.write() as session:
        # A machine known to the broker without its place yet (as a listing records it
        # before the scan's refresh).
        session.add(
            Desktop(
                tenant_id=tenant,
                center_id=ids["center"],
                external_id="lab-extra",
                name="lab-extra",
                power_state="running",
                availability="available",
            )
        )
    seam = Seam()
    seam.after(monkeypatch, membership, "_judged")  # the places read; the inserts next
    failed: list[BaseException] = []

    def refresh_on(ctx: BrokerContext) -> Callable[[], None]:
        def run() -> None:
            try:
                with ctx.db.write() as session:
                    membership.refresh(session, tenant)
            except Exception as exc:  # the assertion below names it
                failed.append(exc)

        return run

    while_held(
        seam,
        refresh_on(other_broker),
        refresh_on(api.ctx),
        other_ends_first=False,
        other_waits_s=1,
    )
    assert failed == []
    assert _members(api.ctx, ids["pool"]) == {"lab-000", "lab-001", "lab-extra"}

"""The engine's removal pass (``engine/removals.remove_desktops``) and a membership
refresh at once. The pass deletes the desktops its center confirmed gone, several in one
unit, in id order; a refresh inserts places pool by pool, and each place takes a
``KEY SHARE`` lock on its desktop's row through the foreign key, which a delete blocks.
The pass deleted its first desktop without the tenant's membership (``membership.hold``):
a refresh then placed the second desktop in one pool and waited for the first in the
next, while the pass waited for the second, and PostgreSQL rolled one of the two back
(deadlock detected). The pass now holds the membership of every tenant it removes
desktops of, in one sorted order, before its first delete: the refresh waits for it,
then finds the desktops gone. On SQLite the one writer serialises the two; the tests
hold there too."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import ClassVar, cast

import pytest
from sqlalchemy import select

from deskbroker.bootstrap import ensure_defaults
from deskbroker.centers.base import Capability, CenterDriver, MachineInfo
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.removals import remove_desktops
from deskbroker.services.context import BrokerContext
from deskbroker.store import membership
from deskbroker.store import removals as removals_store
from deskbroker.store.tables import Center, Desktop, Pool, PoolMember, utcnow
from tests.helpers import Api
from tests.races import Seam, while_held


class _GoneCenter:
    """A center that can terminate machines and has none of them any more: the pass
    confirms each of its desktops gone."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.TERMINATE})

    def machine(self, external_id: str) -> MachineInfo | None:
        return None

    def terminate(self, machine: MachineInfo) -> None:
        raise AssertionError(f"{machine.name} is gone: nothing to terminate")


class _GoneDrivers(DriverCache):
    def get(self, center: Center) -> CenterDriver:
        return cast(CenterDriver, _GoneCenter())


@pytest.fixture
def other_broker(ctx: BrokerContext) -> Iterator[BrokerContext]:
    """A second broker on the same database: its own engine and connections."""
    other = BrokerContext.from_settings(ctx.settings)
    yield other
    other.db.dispose()


def _tenant_of(api: Api, center_id: str) -> str:
    with api.ctx.db.read() as session:
        return str(session.scalars(select(Center.tenant_id).where(Center.id == center_id)).one())


def _mark_deleting(api: Api, desktop_ids: list[str]) -> None:
    """As an administrator's delete leaves a built desktop: its removal asked for."""
    with api.ctx.db.write() as session:
        for row in session.scalars(select(Desktop).where(Desktop.id.in_(desktop_ids))):
            row.deletable = True
            row.power_state = "deleting"
            row.availability = "unavailable"
            row.delete_requested_at = utcnow()


def _members(ctx: BrokerContext, pool_id: str) -> set[str]:
    with ctx.db.read() as session:
        return set(
            session.scalars(select(PoolMember.desktop_id).where(PoolMember.pool_id == pool_id))
        )


def _left(ctx: BrokerContext, desktop_ids: list[str]) -> list[str]:
    with ctx.db.read() as session:
        return list(session.scalars(select(Desktop.id).where(Desktop.id.in_(desktop_ids))))


class _Race:
    """The pass on this broker, held just after its first delete; a refresh of
    ``tenant_id`` on the other broker meanwhile. Each records what it raised."""

    def __init__(
        self, api: Api, other_broker: BrokerContext, center_id: str, tenant_id: str
    ) -> None:
        self.api = api
        self.other_broker = other_broker
        self.center_id = center_id
        self.tenant_id = tenant_id
        self.outcome: list[str] = []
        self.failed: list[BaseException] = []

    def remove(self) -> None:
        try:
            self.outcome.append(
                remove_desktops(
                    self.api.ctx, _GoneDrivers(self.api.ctx), self.center_id, datetime.now()
                )
            )
        except Exception as exc:  # the assertion below names it
            self.failed.append(exc)

    def refresh(self) -> None:
        try:
            with self.other_broker.db.write() as session:
                membership.refresh(session, self.tenant_id)
        except Exception as exc:  # the assertion below names it
            self.failed.append(exc)

    def run(self, monkeypatch: pytest.MonkeyPatch) -> None:
        seam = Seam()
        seam.after(monkeypatch, removals_store, "forget_removed")
        # The refresh waits for the pass whatever the database: for the tenant's
        # membership on PostgreSQL, for the one writer on SQLite.
        while_held(seam, self.remove, self.refresh, other_ends_first=False, other_waits_s=1)


def test_a_removal_of_several_desktops_and_a_refresh_placing_them_both_commit(
    api: Api, other_broker: BrokerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadlock: the refresh places the desktop the pass deletes second before the
    one it deletes first (they go to two pools, the first read taking the second)."""
    ids = api.seed_pool(2)
    center_id = ids["center"]
    tenant = _tenant_of(api, center_id)
    pools = {
        rack: api.post(
            "pools",
            {
                "name": f"rack-{rack}",
                "center_ids": [center_id],
                "filters": [{"attribute": "rack", "op": "equals", "value": rack}],
            },
        )["id"]
        for rack in ("one", "two")
    }
    with api.ctx.db.read() as session:
        # The order the refresh reads (and places into) the pools: the same statement.
        read = [p.id for p in session.scalars(select(Pool).where(Pool.tenant_id == tenant))]
        desktops = sorted(session.scalars(select(Desktop.id).where(Desktop.center_id == center_id)))
    early, late = sorted(pools, key=lambda rack: read.index(pools[rack]))
    first, second = desktops  # the pass's order: by id
    _mark_deleting(api, desktops)
    with api.ctx.db.write() as session:
        # What a scan records before its refresh places them: the pool read first takes
        # the desktop the pass deletes second.
        for desktop_id, rack in ((second, early), (first, late)):
            row = session.get(Desktop, desktop_id)
            assert row is not None
            row.attributes = {**row.attributes, "rack": rack}
    assert not _members(api.ctx, pools["one"]) and not _members(api.ctx, pools["two"])

    race = _Race(api, other_broker, center_id, tenant)
    race.run(monkeypatch)

    assert race.failed == []
    assert race.outcome == ["2 removed, 0 asked to delete"]
    assert _left(api.ctx, desktops) == []
    assert not _members(api.ctx, pools["one"]) and not _members(api.ctx, pools["two"])
    assert not _members(api.ctx, ids["pool"])


def test_a_removal_holds_every_tenants_membership_before_its_first_delete(
    api: Api, other_broker: BrokerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Desktops of two tenants in one pass (it goes by each desktop's own tenant, not
    its center's): the tenant of the desktop it deletes second
    is held before the first delete, so that tenant's refresh waits for the pass too
    (a hold taken only before each tenant's own deletes, after another's rows were
    locked, is the crossing ``membership.hold`` forbids)."""
    ids = api.seed_pool(1)
    center_id = ids["center"]
    other_tenant = ensure_defaults(api.ctx, "b").tenant_id
    with api.ctx.db.write() as session:
        theirs = Desktop(
            tenant_id=other_tenant,
            center_id=center_id,
            external_id="b-000",
            name="b-000",
            power_state="running",
            availability="available",
        )
        session.add(theirs)
        # The other tenant's pool takes the desktop by its name; its place is the
        # refresh's to write.
        session.add(
            Pool(
                tenant_id=other_tenant,
                name="b",
                filters=[{"attribute": "name", "op": "begins_with", "value": "b-"}],
            )
        )
        session.flush()
        tenants: dict[str, str] = {
            desktop_id: tenant_id
            for desktop_id, tenant_id in session.execute(
                select(Desktop.id, Desktop.tenant_id).where(Desktop.center_id == center_id)
            )
        }
    desktops = sorted(tenants)
    assert len(set(tenants.values())) == 2
    _mark_deleting(api, desktops)
    second = desktops[1]  # the pass's order: by id

    race = _Race(api, other_broker, center_id, tenants[second])
    race.run(monkeypatch)

    assert race.failed == []
    assert race.outcome == ["2 removed, 0 asked to delete"]
    assert _left(api.ctx, desktops) == []

"""The configuration version moves when a write unit commits: once per tenant the unit
changed, never for a unit rolled back, and not at a savepoint's release."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from deskbroker.services.context import BrokerContext
from deskbroker.store.claims import config_version
from deskbroker.store.config_version import bump_config_version
from deskbroker.store.tables import ConfigChange
from tests.helpers import Api, tenant_admin_of


def _version(ctx: BrokerContext) -> int:
    with ctx.db.read() as session:
        return config_version(session)


def _changes_after(ctx: BrokerContext, version: int) -> list[tuple[int, str | None]]:
    with ctx.db.read() as session:
        rows = session.execute(
            select(ConfigChange.version, ConfigChange.tenant_id)
            .where(ConfigChange.version > version)
            .order_by(ConfigChange.version)
        ).all()
    return [(int(v), t) for v, t in rows]


def _tenants(api: Api) -> tuple[str, str]:
    acme = tenant_admin_of(api, "acme", "acme-boss").post("pools", {"name": "a"})
    globex = tenant_admin_of(api, "globex", "globex-boss").post("pools", {"name": "g"})
    return acme["tenant_id"], globex["tenant_id"]


def test_a_unit_moves_the_version_once_per_tenant_at_its_commit(
    api: Api, ctx: BrokerContext
) -> None:
    acme, globex = _tenants(api)
    before = _version(ctx)
    with ctx.db.write() as session:
        for tenant in (globex, acme, globex, acme):
            bump_config_version(session, tenant)
        # Not yet: the row is taken at the commit, not at the first change.
        assert config_version(session) == before
    assert _version(ctx) == before + 2
    assert _changes_after(ctx, before) == [
        (before + 1, min(acme, globex)),
        (before + 2, max(acme, globex)),
    ]


def test_a_change_of_every_tenant_is_one_version(api: Api, ctx: BrokerContext) -> None:
    acme, _ = _tenants(api)
    before = _version(ctx)
    with ctx.db.write() as session:
        bump_config_version(session, acme)
        bump_config_version(session, None)
    assert _changes_after(ctx, before) == [(before + 1, None)]


def test_a_unit_rolled_back_moves_nothing(api: Api, ctx: BrokerContext) -> None:
    acme, _ = _tenants(api)
    before = _version(ctx)
    with pytest.raises(RuntimeError), ctx.db.write() as session:
        bump_config_version(session, acme)
        raise RuntimeError("the unit fails")
    assert _version(ctx) == before
    # The session's record of the failed unit is gone: the next unit moves only its own.
    with ctx.db.write() as session:
        pass
    assert _version(ctx) == before


def test_a_savepoint_released_waits_for_the_units_commit(api: Api, ctx: BrokerContext) -> None:
    acme, globex = _tenants(api)
    before = _version(ctx)
    with ctx.db.write() as session:
        with session.begin_nested():
            bump_config_version(session, acme)
        assert config_version(session) == before
        with session.begin_nested():
            bump_config_version(session, globex)
    assert _version(ctx) == before + 2

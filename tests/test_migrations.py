"""Migrations and models agree, on whichever backend the run uses."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from deskbroker.services.context import BrokerContext
from deskbroker.store.migrate import current_revision, upgrade
from deskbroker.store.tables import Base


def test_schema_matches_models(ctx: BrokerContext) -> None:
    with ctx.db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"


def test_upgrade_is_idempotent(ctx: BrokerContext) -> None:
    before = current_revision(ctx.db)
    upgrade(ctx.db)
    assert current_revision(ctx.db) == before == "0001"

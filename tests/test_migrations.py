"""Migrations and models agree, on whichever backend the run uses."""

from __future__ import annotations

import importlib

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import CheckConstraint, inspect, select, text, update
from sqlalchemy.exc import IntegrityError

from deskbroker.services.context import BrokerContext
from deskbroker.store.migrate import current_revision, upgrade
from deskbroker.store.tables import (
    CLAIM_ORDER,
    FREE_DESKTOP,
    Base,
    Desktop,
    ProvisioningTask,
    SessionRow,
)
from tests.helpers import Api


def _not_a_claim_index(obj: object, name: str | None, kind: str, *_: object) -> bool:
    # Alembic cannot compare expression indexes (PostgreSQL reflects CASE with casts and
    # parentheses of its own): test_claim_indexes_match_models compares those.
    return not (kind == "index" and (name or "").startswith("ix_desktops_free_"))


def test_schema_matches_models(ctx: BrokerContext) -> None:
    with ctx.db.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"include_object": _not_a_claim_index}
        )
        diff = compare_metadata(context, Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"


def _spelled(sql: str) -> str:
    return _normal(sql).replace("\n", "")


def test_claim_indexes_match_models(ctx: BrokerContext) -> None:
    """The migration's claim indexes are tables.CLAIM_ORDER and tables.FREE_DESKTOP,
    and the database holds one per ordering with that predicate."""
    migration = importlib.import_module("deskbroker.store.migrations.versions.0001_initial_schema")
    dialect = ctx.db.engine.dialect
    for ordering, rank in CLAIM_ORDER.items():
        model = [
            str(r.compile(dialect=dialect, compile_kwargs={"literal_binds": True})) for r in rank
        ]
        assert [_spelled(m.replace("desktops.", "")) for m in model] == [
            _spelled(r) for r in migration._CLAIM_RANKS[ordering.value]
        ], ordering
    free = str(FREE_DESKTOP.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    assert _spelled(free.replace("desktops.", "")) == _spelled(migration._FREE)
    # SQLite's inspector leaves expression indexes out: ask each catalogue itself.
    catalogue = (
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'desktops'"
        if ctx.db.is_sqlite
        else "SELECT indexname FROM pg_indexes WHERE tablename = 'desktops'"
    )
    with ctx.db.engine.connect() as connection:
        indexes = set(connection.execute(text(catalogue)).scalars())
    for ordering in CLAIM_ORDER:
        assert f"ix_desktops_free_{ordering.value}" in indexes, sorted(indexes)
    assert "uq_desktops_user_pool_slot" in indexes


def test_upgrade_is_idempotent(ctx: BrokerContext) -> None:
    before = current_revision(ctx.db)
    upgrade(ctx.db)
    assert current_revision(ctx.db) == before == "0002_rollout"


# Every state column, with a value its machine does not have.
_STATE_COLUMNS = [
    ("desktops", "power_state"),
    ("desktops", "availability"),
    ("desktops", "agent_state"),
    ("sessions", "state"),
    ("provisioning_tasks", "state"),
]


def _normal(sql: str) -> str:
    # PostgreSQL reflects ``IN (...)`` as ``= ANY (ARRAY[...::character varying])``.
    for noise in ("::character varying", "::text", "(", ")", "[", "]", " ", '"'):
        sql = sql.replace(noise, "")
    return sql.replace("=ANYARRAY", "IN").lower()


def test_migration_checks_match_models(ctx: BrokerContext) -> None:
    """compare_metadata does not see CHECK constraints: compare the state checks directly."""
    inspector = inspect(ctx.db.engine)
    for table, column in _STATE_COLUMNS:
        name = f"ck_{table}_{column}"
        reflected = {c["name"]: c["sqltext"] for c in inspector.get_check_constraints(table)}
        assert name in reflected, f"{table} has no {name}: {sorted(reflected)}"
        model = next(
            str(c.sqltext)
            for c in Base.metadata.tables[table].constraints
            if isinstance(c, CheckConstraint) and c.name == name
        )
        assert _normal(reflected[name]) == _normal(model)


@pytest.mark.parametrize(("table", "column"), _STATE_COLUMNS)
def test_database_refuses_a_state_outside_its_machine(
    ctx: BrokerContext, api: Api, table: str, column: str
) -> None:
    ids = api.seed_pool(1, name="chk")
    with ctx.db.write() as session:
        desktop = session.scalars(select(Desktop).where(Desktop.name == "chk-000")).one()
        session.add(SessionRow(tenant_id=desktop.tenant_id, desktop_id=desktop.id))
        session.add(
            ProvisioningTask(
                tenant_id=desktop.tenant_id,
                center_id=desktop.center_id,
                pool_id=ids["pool"],
                name="chk-002",
            )
        )
    rows = Base.metadata.tables[table]
    refused = pytest.raises(IntegrityError, match=f"ck_{table}_{column}|CHECK constraint")
    with refused, ctx.db.write() as session:
        session.execute(update(rows).values({column: "sideways"}))
    with ctx.db.read() as session:
        values = session.scalars(select(rows.c[column])).all()
    assert values and "sideways" not in values

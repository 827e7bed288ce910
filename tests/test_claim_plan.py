"""The claim walks its partial index in a large pool: asked of the database's planner.

A claim must cost the same in a pool of 50 and of 20,000 (benchmarks/login.py
--desktops 50,20000 measures it); what makes it so is the plan: the claim reads the
tenant's free desktops in the pool's order from ``ix_desktops_free_<ordering>`` and stops
at the first member of the pool, instead of sorting every free desktop of the pool.
"""

from __future__ import annotations

import time
from typing import cast

import pytest
from sqlalchemy import literal_column, text
from sqlalchemy.orm import Session

from deskbroker.domain.offers import OfferOrdering
from deskbroker.services.context import BrokerContext
from deskbroker.store import claims
from deskbroker.store.planner import BULK_ROWS, refresh_statistics
from tests.helpers import Api

LARGE = 1500


def _sql(ctx: BrokerContext, ordering: OfferOrdering, tenant: str, pool: str) -> str:
    statement = claims.claim_candidate(tenant_id=tenant, pool_id=pool, ordering=ordering)
    dialect = ctx.db.engine.dialect
    return str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def _plan(session: Session, ctx: BrokerContext, sql: str) -> str:
    explain = "EXPLAIN QUERY PLAN " if ctx.db.is_sqlite else "EXPLAIN "
    rows = session.execute(text(explain + sql)).all()
    return "\n".join(str(row[-1]) for row in rows)


@pytest.fixture
def large_pool(api: Api, ctx: BrokerContext) -> dict[str, str]:
    """A pool over a static center of LARGE machines beside a small one, as an
    administrator makes them (the pool's creation writes the members in bulk)."""
    api.seed_pool(20, name="small")
    ids = api.seed_pool(LARGE, name="large", address_base="127.0.2.")
    tenant = api.get("identity-sources?kind=local")["items"][0]["tenant_id"]
    return {**ids, "tenant": tenant}


@pytest.mark.parametrize("ordering", list(OfferOrdering))
def test_claim_walks_the_free_index_of_its_ordering(
    ctx: BrokerContext, large_pool: dict[str, str], ordering: OfferOrdering
) -> None:
    sql = _sql(ctx, ordering, large_pool["tenant"], large_pool["pool"])
    with ctx.db.read() as session:
        plan = _plan(session, ctx, sql)
    assert f"ix_desktops_free_{ordering.value}" in plan, plan
    # No sort of the pool: the index yields the best free desktop first.
    assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan


def test_a_plan_made_without_the_tenant_and_pool_walks_the_index(
    ctx: BrokerContext, large_pool: dict[str, str]
) -> None:
    """A plan made for any tenant and pool must walk the index too: psycopg prepares a
    statement run five times on a connection and PostgreSQL may then keep one generic
    plan for it; SQLite plans every statement with its parameters unknown. (The free
    predicate and the ranks are literals, so both can.)"""
    marks = ("$1", "$2") if ctx.db.is_postgres else ("?", "?")
    tenant, pool = (cast(str, literal_column(m)) for m in marks)
    sql = _sql(ctx, OfferOrdering.RUNNING_FIRST, tenant, pool)
    with ctx.db.read() as session:
        if ctx.db.is_sqlite:
            cursor = session.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
            # The tenant, then the pool for each place that names it (membership, drain).
            marks_given = (large_pool["tenant"], *[large_pool["pool"]] * (sql.count("?") - 1))
            rows = cursor.execute("EXPLAIN QUERY PLAN " + sql, marks_given).fetchall()
            plan = "\n".join(str(r[-1]) for r in rows)
        else:
            session.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
            session.execute(text(f"PREPARE claim_plan(varchar, varchar) AS {sql}"))
            # Hex ids, spelled inline: EXECUTE takes no parameters of its own.
            execute = f"EXECUTE claim_plan('{large_pool['tenant']}', '{large_pool['pool']}')"
            rows = session.execute(text(f"EXPLAIN {execute}")).all()
            session.execute(text("DEALLOCATE claim_plan"))
            plan = "\n".join(str(r[0]) for r in rows)
    assert "ix_desktops_free_running_first" in plan, plan
    assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan


def test_bulk_writes_refresh_the_statistics(ctx: BrokerContext, large_pool: dict[str, str]) -> None:
    """The pool's creation wrote LARGE members at once: PostgreSQL's statistics know
    them already (no waiting for autovacuum); small writes leave it to autovacuum."""
    with ctx.db.write() as session:
        assert refresh_statistics(session, written=BULK_ROWS - 1) is False
    if not ctx.db.is_postgres:
        return
    with ctx.db.read() as session:
        members = session.scalar(
            text("SELECT reltuples FROM pg_class WHERE relname = 'pool_members'")
        )
    assert members is not None and members >= LARGE, members


def test_a_bulk_write_analyzes_after_its_commit_not_within(ctx: BrokerContext) -> None:
    """ANALYZE holds its table's statistics lock until its transaction ends: run inside
    a bulk write, it made every other bulk write (another tenant's) wait for that unit's
    end. Asked within the unit (twice: one ANALYZE), it runs once the unit committed."""
    if not ctx.db.is_postgres:
        with ctx.db.write() as session:
            assert refresh_statistics(session, written=BULK_ROWS) is False
        return
    with ctx.db.write() as session:
        assert refresh_statistics(session, written=BULK_ROWS)
        assert refresh_statistics(session, written=BULK_ROWS)
        # Another unit's ANALYZE of the table goes through while this one is open.
        with ctx.db.engine.connect() as other:
            other.execute(text("SET lock_timeout = '2s'"))
            other.execute(text("ANALYZE pool_members"))
            other.commit()
        last_statement = session.scalar(text("SELECT clock_timestamp()"))
    with ctx.db.engine.connect() as conn:
        # The statistics views lag a little behind the commands.
        for _ in range(100):
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            analyzed = conn.execute(
                text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'pool_members'")
            ).scalar_one()
            if analyzed is not None and analyzed > last_statement:
                break
            time.sleep(0.1)
        assert analyzed is not None and analyzed > last_statement, (analyzed, last_statement)

"""Fixtures: a fresh database per test on SQLite or PostgreSQL (DESKBROKER_TEST_DB)."""

from __future__ import annotations

import gc
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from deskbroker import outbound
from deskbroker.api.app import create_app
from deskbroker.bootstrap import ensure_defaults
from deskbroker.config import Settings
from deskbroker.outbound import OutboundPolicy
from deskbroker.services.context import BrokerContext
from deskbroker.store.db import Database
from deskbroker.store.migrate import upgrade
from deskbroker.store.tables import Base
from tests import backend_legs
from tests.helpers import Api
from tests.oidc.provider import OidcProvider, running_provider

# pytest-xdist starts its workers with COLUMNS=80 and LINES=24 in their environment, which a
# serial run does not have: rich consoles made at import (the CLI's) would then fix their
# width at 80 and ignore the COLUMNS a test gives the command. Workers run as a serial run.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _variable in ("COLUMNS", "LINES"):
        os.environ.pop(_variable, None)

# Tests run every server on loopback, which the outbound policy denies by default.
LOOPBACK = "127.0.0.0/8,::1/128"
BACKEND = os.environ.get("DESKBROKER_TEST_DB", "sqlite")
PG_ADMIN = os.environ.get("DESKBROKER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def pytest_report_header() -> str:
    """Which database this leg runs on, and whether it runs every test."""
    if BACKEND == "postgresql" and not backend_legs.every_leg():
        return (
            "database: postgresql (tests that do not use the database ran on the SQLite leg; "
            f"{backend_legs.EVERY_LEG_ENV}=1 runs them here too)"
        )
    return f"database: {BACKEND}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the PostgreSQL leg, leave out the tests ``tests/backend_legs.py`` lists that do
    not use the test database: they ran, unchanged, on the SQLite leg."""
    if BACKEND != "postgresql" or backend_legs.every_leg():
        return
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        (dropped if backend_legs.one_leg_only(item.nodeid, fixtures) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """The run is over: spare the interpreter its last full garbage collection over
    everything the suite left in memory (several hundred MB), which on a loaded machine
    kept a finished run alive for minutes after its summary."""
    gc.freeze()


def _pg_url(name: str) -> str:
    base = PG_ADMIN.rsplit("/", 1)[0]
    return f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(autouse=True)
def loopback_allowed() -> Iterator[None]:
    """Tests that open drivers without a broker context reach their servers on
    loopback; the policy in force is put back after each test."""
    before = outbound.current()
    outbound.install(OutboundPolicy.from_text(LOOPBACK, outbound.DEFAULT_DENY))
    yield
    outbound.install(before)


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database for the run: a SQLite file to copy, or a throwaway PG database."""
    if BACKEND == "postgresql":
        name = f"deskbroker_test_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = _pg_url(name)
        db = Database(url)
        upgrade(db)
        db.dispose()
        yield url
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    path = tmp_path_factory.mktemp("template") / "template.db"
    db = Database(f"sqlite:///{path}")
    upgrade(db)
    db.dispose()
    yield str(path)


@pytest.fixture
def db_url(template_db: str, tmp_path: Path) -> str:
    if BACKEND == "postgresql":
        db = Database(template_db)
        # Plain DELETEs with foreign-key triggers off: an order of magnitude faster than
        # TRUNCATE on tables this small.
        with db.engine.begin() as conn:
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            for table in Base.metadata.sorted_tables:
                if table.name != "broker_state":
                    conn.execute(table.delete())
            conn.execute(text("UPDATE broker_state SET config_version = config_version + 1"))
            # Ids from sequences start again too, as in a new database: a test's first
            # event after one that left (and deleted) 34 would otherwise start at 35, a
            # gap the webhooks' fan-out waits before passing (an order-dependent failure).
            conn.execute(
                text(
                    "SELECT setval(format('%I.%I', schemaname, sequencename), 1, false) "
                    "FROM pg_sequences WHERE schemaname = current_schema()"
                )
            )
        db.dispose()
        return template_db
    target = tmp_path / "deskbroker.db"
    shutil.copy(template_db, target)
    return f"sqlite:///{target}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database of its own, whichever backend the suite runs on: for
    tests that start broker processes of their own."""
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    db = Database(url)
    upgrade(db)
    db.dispose()
    return url


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        secret_key="test-secret-" + uuid.uuid4().hex,
        # cloudsim, slapd, ypserv and the OpenID provider of the tests listen on loopback.
        outbound_allow=LOOPBACK,
        metrics_token="test-metrics-" + uuid.uuid4().hex,
        argon2_time_cost=1,
        argon2_memory_kib=64,
        db_pool_size=20,
        provision_retry_base_s=0.05,
        provision_poll_s=0.05,
        quota_backoff_s=0.5,
        provision_interval_s=0.5,
    )


@pytest.fixture
def ctx(settings: Settings) -> Iterator[BrokerContext]:
    context = BrokerContext.from_settings(settings)
    ensure_defaults(context)
    yield context
    context.db.dispose()


@pytest.fixture
def client(ctx: BrokerContext) -> Iterator[TestClient]:
    with TestClient(create_app(ctx)) as test_client:
        yield test_client


@pytest.fixture
def api(client: TestClient, ctx: BrokerContext) -> Api:
    return Api.with_admin(client, ctx)


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """One OpenID provider for the session (the OpenID tests and the identity
    conformance suite), started on first use and stopped at the end."""
    with running_provider(tmp_path_factory.mktemp("oidc")) as provider:
        yield provider

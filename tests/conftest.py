"""Fixtures: a fresh database per test on SQLite or PostgreSQL (DESKBROKER_TEST_DB)."""

from __future__ import annotations

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
from tests.helpers import Api

# Tests run every server on loopback, which the outbound policy denies by default.
LOOPBACK = "127.0.0.0/8,::1/128"
BACKEND = os.environ.get("DESKBROKER_TEST_DB", "sqlite")
PG_ADMIN = os.environ.get("DESKBROKER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


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
        db.dispose()
        return template_db
    target = tmp_path / "deskbroker.db"
    shutil.copy(template_db, target)
    return f"sqlite:///{target}"


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

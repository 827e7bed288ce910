"""Rolling upgrades: migrations expand, then contract.

A node of the previous version keeps running while a newer node migrates: every expand
migration only adds, which the check below enforces on every migration file; a node that
finds a schema newer than it knows runs on it; contract migrations wait for
``db upgrade --contract`` and are refused while a node of another version beats.
"""

from __future__ import annotations

import ast
import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect
from typer.testing import CliRunner

from deskbroker import __version__
from deskbroker.api.app import create_app
from deskbroker.bootstrap import ensure_defaults
from deskbroker.cli import app
from deskbroker.config import Settings
from deskbroker.errors import Conflict
from deskbroker.services import schema
from deskbroker.services.context import BrokerContext
from deskbroker.store import migrate, nodes
from deskbroker.store.tables import utcnow
from tests.conftest import BACKEND, PG_ADMIN
from tests.helpers import Api

VERSIONS = migrate.MIGRATIONS / "versions"
# What an expand migration may not do: each breaks a node of the previous version that
# still reads or writes what it removes, renames or tightens.
DESTRUCTIVE = {"drop_table", "drop_column", "rename_table", "execute"}


def destructive_calls(source: str) -> list[str]:
    """The operations of a migration's upgrade() that an expand migration may not make."""
    tree = ast.parse(source)
    found: list[str] = []
    for func in tree.body:
        if not (isinstance(func, ast.FunctionDef) and func.name == "upgrade"):
            continue
        for node in ast.walk(func):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            keywords = {k.arg: k.value for k in node.keywords}
            if name in DESTRUCTIVE:
                found.append(name)
            elif name == "alter_column" and (
                "new_column_name" in keywords
                or (
                    isinstance(keywords.get("nullable"), ast.Constant)
                    and keywords["nullable"].value is False  # type: ignore[attr-defined]
                )
            ):
                found.append("alter_column")
            elif (
                name == "add_column"
                and "server_default" not in _column_keywords(node)
                and _column_keywords(node).get("nullable") is False
            ):
                found.append("add_column NOT NULL without a server default")
    return found


def _column_keywords(call: ast.Call) -> dict[str, object]:
    for arg in call.args:
        if isinstance(arg, ast.Call):
            return {
                k.arg: (k.value.value if isinstance(k.value, ast.Constant) else k.value)
                for k in arg.keywords
                if k.arg
            }
    return {}


def _module_value(source: str, name: str) -> object:
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    return None


def test_every_migration_declares_its_phase_and_expand_only_adds() -> None:
    files = sorted(VERSIONS.glob("[0-9]*.py"))
    assert files
    for file in files:
        source = file.read_text()
        phase = _module_value(source, "phase")
        assert phase in ("expand", "contract"), f"{file.name} declares no phase"
        # The initial schema creates only; later expand migrations must only add.
        if phase == "expand" and _module_value(source, "down_revision") is not None:
            assert destructive_calls(source) == [], f"{file.name} removes or tightens"


def test_the_check_sees_a_destructive_expand_migration() -> None:
    planted = """
def upgrade():
    with op.batch_alter_table("desktops") as batch_op:
        batch_op.drop_column("address")
        batch_op.alter_column("name", new_column_name="label")
        batch_op.alter_column("notes", nullable=False)
    op.add_column("pools", sa.Column("x", sa.String(), nullable=False))
    op.add_column("pools", sa.Column("y", sa.String(), nullable=True))
    op.add_column("pools", sa.Column("z", sa.String(), nullable=False, server_default="a"))
"""
    assert sorted(destructive_calls(planted)) == [
        "add_column NOT NULL without a server default",
        "alter_column",
        "alter_column",
        "drop_column",
    ]


FUTURE_EXPAND = '''"""a later version adds a table"""
import sqlalchemy as sa
from alembic import op

revision = "9000"
down_revision = "{head}"
branch_labels = None
depends_on = None
phase = "expand"


def upgrade() -> None:
    op.create_table(
        "future_things",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("legacy", sa.String(32), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("future_things")
'''

FUTURE_CONTRACT = '''"""a later version drops a column it stopped using"""
from alembic import op

revision = "9001"
down_revision = "9000"
branch_labels = None
depends_on = None
phase = "contract"


def upgrade() -> None:
    with op.batch_alter_table("future_things") as batch_op:
        batch_op.drop_column("legacy")


def downgrade() -> None:
    pass
'''


@pytest.fixture
def own_ctx(settings: Settings, tmp_path: Path) -> Iterator[BrokerContext]:
    """A broker on a database of its own: the later migrations below change its schema,
    which the run's shared PostgreSQL test database must never see."""
    if BACKEND == "postgresql":
        name = f"deskbroker_rolling_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        url = f"{url}/{name}"
    else:
        url = f"sqlite:///{tmp_path / 'own.db'}"
    ctx = BrokerContext.from_settings(settings.model_copy(update={"database_url": url}))
    ensure_defaults(ctx)
    yield ctx
    ctx.db.dispose()
    if BACKEND == "postgresql":
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def later_migrations(tmp_path: Path) -> Path:
    """This version's migrations plus a later version's expand and contract migrations."""
    folder = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS, folder, ignore=shutil.ignore_patterns("__pycache__"))
    heads = [
        _module_value(f.read_text(), "revision")
        for f in VERSIONS.glob("[0-9]*.py")
        if not any(
            _module_value(g.read_text(), "down_revision")
            == _module_value(f.read_text(), "revision")
            for g in VERSIONS.glob("[0-9]*.py")
        )
    ]
    assert len(heads) == 1, heads
    (folder / "versions" / "9000_future.py").write_text(FUTURE_EXPAND.format(head=heads[0]))
    (folder / "versions" / "9001_future.py").write_text(FUTURE_CONTRACT)
    return folder


def _columns(ctx: BrokerContext, table: str) -> set[str]:
    return {c["name"] for c in inspect(ctx.db.engine).get_columns(table)}


def test_a_node_runs_on_a_schema_a_newer_node_expanded(
    own_ctx: BrokerContext, later_migrations: Path
) -> None:
    """The newer node migrates (expand only at start-up: the contract waits); this
    version's node then starts on that schema and serves logins as before."""
    ctx = own_ctx
    newer = migrate.upgrade(ctx.db, migrations=later_migrations)
    assert (newer.revision, newer.contract_pending, newer.ahead) == ("9000", ("9001",), False)
    assert "legacy" in _columns(ctx, "future_things")
    # This version does not know 9000: it leaves the schema as it is and works on it.
    mine = migrate.upgrade(ctx.db)
    assert (mine.revision, mine.ahead) == ("9000", True)
    with TestClient(create_app(ctx)) as client:
        api = Api.with_admin(client, ctx)
        api.seed_pool(2, users=2)
        assert api.login("user0")["offers"][0]["status"] == "assigned"


def test_contract_migrations_wait_for_every_node_of_another_version(
    own_ctx: BrokerContext, later_migrations: Path
) -> None:
    ctx = own_ctx
    migrate.upgrade(ctx.db, migrations=later_migrations)
    todo = schema.plan(ctx, later_migrations)
    assert (todo.expand, todo.contract) == ((), ("9001",))
    # A node of the previous version still beats: the contract is refused in words.
    old = nodes.NodeInfo("old:0001", "old", "host-a", 1, 1, "0.0.9", utcnow())
    with ctx.db.connect_write() as conn:
        nodes.beat(conn, old, utcnow())
    with pytest.raises(Conflict, match=r"old:0001 \(0\.0\.9\)"):
        schema.upgrade(ctx, contract=True, migrations=later_migrations)
    assert "legacy" in _columns(ctx, "future_things")
    # Once that node is silent past node_dead_after_s, the contract goes ahead.
    long_ago = utcnow() - timedelta(seconds=ctx.settings.node_dead_after_s + 1)
    with ctx.db.connect_write() as conn:
        nodes.beat(conn, old, long_ago)
    done = schema.upgrade(ctx, contract=True, migrations=later_migrations)
    assert (done.revision, done.contract_pending) == ("9001", ())
    assert "legacy" not in _columns(ctx, "future_things")


def test_db_upgrade_says_what_it_applied_and_refuses_a_contract_in_words(
    ctx: BrokerContext,
) -> None:
    runner = CliRunner()
    url = ctx.settings.effective_database_url
    args = ["db", "upgrade", "--db", url, "--data-dir", str(ctx.settings.data_dir)]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "applied: nothing" in done.output
    # Nothing waits, so --contract has nothing to refuse even with another version live.
    other = nodes.NodeInfo("old:0002", "old", "host-b", 1, 1, "0.0.9", utcnow())
    with ctx.db.connect_write() as conn:
        nodes.beat(conn, other, utcnow())
    again = runner.invoke(app, [*args, "--contract"])
    assert again.exit_code == 0, again.output
    assert __version__ != "0.0.9"

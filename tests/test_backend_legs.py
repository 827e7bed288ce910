"""The list of tests that run on the SQLite leg only (``tests/backend_legs.py``) stays
conservative: its entries exist, none of them opens a broker of its own, and a test that
uses the test database runs on both legs wherever it lives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import backend_legs

ROOT = Path(__file__).resolve().parent.parent

# What opening a broker, its database or its app looks like in a test module.
OPENS_A_BROKER = re.compile(r"\b(BrokerContext|Database|create_app|TestClient)\(|\.from_settings\(")


def _modules(entry: str) -> list[Path]:
    path = ROOT / entry
    return sorted(path.rglob("*.py")) if entry.endswith("/") else [path]


@pytest.mark.parametrize("entry", backend_legs.ONE_LEG)
def test_a_listed_module_exists_and_opens_no_broker(entry: str) -> None:
    modules = _modules(entry)
    assert modules and all(m.is_file() for m in modules), f"{entry} is not in the tree"
    for module in modules:
        found = OPENS_A_BROKER.search(module.read_text())
        assert found is None, (
            f"{module.relative_to(ROOT)} opens a broker ({found.group(0)}...): "
            "take it out of tests/backend_legs.py so it runs on both databases"
        )


def test_only_listed_tests_without_the_database_skip_a_leg() -> None:
    assert backend_legs.one_leg_only("tests/cloudsim/test_compute.py::test_x", {"sim"})
    assert backend_legs.one_leg_only("tests/test_domain.py::test_x[a]", set())
    # A test of a listed module that asks for the database stays on both legs.
    assert not backend_legs.one_leg_only(
        "tests/test_states.py::test_x", {"api", "ctx", backend_legs.DATABASE_FIXTURE}
    )
    # A module that is not listed, or is only named like a listed one, stays too.
    assert not backend_legs.one_leg_only("tests/test_smoke.py::test_x", set())
    assert not backend_legs.one_leg_only("tests/test_domain_more.py::test_x", set())
    assert not backend_legs.one_leg_only("tests/cloudsimulated/test_x.py::test_x", set())


def test_every_database_fixture_goes_through_the_one_the_hook_looks_for(
    request: pytest.FixtureRequest, api: object, client: object, ctx: object, settings: object
) -> None:
    """The hook tells a database test by ``template_db``: were a fixture to reach the test
    database another way, its tests would silently skip the PostgreSQL leg."""
    assert backend_legs.DATABASE_FIXTURE in request.fixturenames

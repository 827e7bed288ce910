"""Which tests run on one database leg only.

``make test`` runs the whole suite twice: on SQLite, then with DESKBROKER_TEST_DB=postgresql.
A test that never touches the test database (the OpenStack simulator, the pure domain, the
agent program, the client's descriptors, the directory protocols...) proves nothing new
the second time, and costs minutes. ``tests/conftest.py`` deselects those listed here on
the PostgreSQL leg; ``DESKBROKER_TEST_EVERY_LEG=1`` runs everything on both.

The list is conservative on purpose:

- an entry is a whole test module or folder, in which no test opens a broker of its own
  (``tests/test_backend_legs.py`` fails once a listed module builds a ``BrokerContext``, a
  ``Database``, the app or a ``TestClient``);
- within a listed module a test that asks for the test database (the ``template_db``
  fixture, through ``db_url``, ``settings``, ``ctx``, ``client``, ``api``...) still runs
  on both legs: the hook looks at each test's fixtures, not only at its module.
"""

from __future__ import annotations

import os

#: Set to 1 to run every test on every leg (as before this list existed).
EVERY_LEG_ENV = "DESKBROKER_TEST_EVERY_LEG"

#: The fixture every use of the test database goes through (``tests/conftest.py``).
DATABASE_FIXTURE = "template_db"

#: Test modules and folders (paths from the repository root) whose tests do not depend on
#: the database the suite runs on.
ONE_LEG: tuple[str, ...] = (
    "tests/agent/test_agent_program.py",
    "tests/centers/test_cloud_deadline.py",
    "tests/centers/test_openstack.py",
    "tests/centers/test_openstack_clouds.py",
    "tests/centers/test_seam.py",
    "tests/centers/test_static.py",
    "tests/cloudsim/",
    "tests/identity/test_conformance.py",
    "tests/identity/test_nis_protocol.py",
    "tests/identity/test_outbound_directories.py",
    "tests/identity/test_source_bounds.py",
    "tests/test_architecture.py",
    # The benchmarks choose their own databases (SQLite, a private PostgreSQL).
    "tests/test_benchmarks.py",
    "tests/test_client_viewers.py",
    "tests/test_deadlines.py",
    # The demo runs its own broker on SQLite in its own data directory, whatever the leg.
    "tests/test_demo.py",
    "tests/test_descriptors.py",
    "tests/test_domain.py",
    "tests/test_gateway_process.py",
    "tests/test_pool_status.py",
    "tests/test_protocol_plans.py",
    "tests/test_rule_explain.py",
    "tests/test_scan_power.py",
    "tests/test_states.py",
    "tests/test_tickets.py",
    "tests/test_timestamps.py",
    "tests/test_tools.py",
    "tests/test_backend_legs.py",
)


def every_leg() -> bool:
    """Whether the run asked for every test on every leg."""
    return os.environ.get(EVERY_LEG_ENV, "") not in ("", "0")


def one_leg_only(nodeid: str, fixtures: set[str] | frozenset[str] | list[str]) -> bool:
    """Whether the test ``nodeid`` (with the fixtures it uses) may skip the second leg:
    it lies under a listed module or folder and does not use the test database."""
    path = nodeid.split("::", 1)[0]
    listed = any(
        path == entry or (entry.endswith("/") and path.startswith(entry)) for entry in ONE_LEG
    )
    return listed and DATABASE_FIXTURE not in fixtures

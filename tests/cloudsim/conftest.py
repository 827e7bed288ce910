"""Fixtures: one simulator per module (fast clock), reset before each test, and real
openstacksdk connections to it."""

from __future__ import annotations

import json
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import openstack
import pytest

from cloudsim.server import CloudSim

#: Simulated seconds per real second in tests: a 1 s build takes 25 ms.
SPEED = 40.0
#: Poll interval for openstacksdk's wait_* helpers (their default is 2 s).
POLL = 0.02


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """openstacksdk warns about its own internals on every call; keep reports readable."""
    for item in items:
        if "tests/cloudsim" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"))


def make_connection(sim: CloudSim, project: str = "demo", **extra: Any) -> Any:
    """An openstacksdk Connection through the proxy layer, as the broker makes it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return openstack.connection.Connection(**sim.credentials(project, **extra))


@pytest.fixture(scope="module")
def sim() -> Iterator[CloudSim]:
    """A running simulator with projects demo and other."""
    simulator = CloudSim(projects=["demo", "other"], clock_speed=SPEED).start()
    yield simulator
    simulator.stop()


@pytest.fixture(autouse=True)
def _fresh(request: pytest.FixtureRequest) -> None:
    """Every test starts from the default resources, rules and speed (identity kept)."""
    if "sim" in request.fixturenames:
        simulator: CloudSim = request.getfixturevalue("sim")
        simulator.reset()
        simulator.set_clock_speed(SPEED)
        simulator.set_timings(
            build=1.0,
            start=0.5,
            stop=0.5,
            suspend=0.5,
            resume=0.5,
            reboot=0.5,
            delete=0.5,
            volume=0.2,
            error_after_build=1.0,
        )


@pytest.fixture(scope="module")
def conn(sim: CloudSim) -> Any:
    """openstacksdk Connection for project demo."""
    return make_connection(sim)


@pytest.fixture(scope="module")
def other_conn(sim: CloudSim) -> Any:
    """openstacksdk Connection for project other."""
    return make_connection(sim, "other")


@pytest.fixture
def boot(sim: CloudSim, conn: Any) -> Callable[..., Any]:
    """Create a server on the private network with cirros/m1.tiny and wait for ACTIVE."""

    def _boot(name: str = "vm", wait: bool = True, **attrs: Any) -> Any:
        image = conn.image.find_image("cirros-0.6.2-x86_64-disk")
        network = conn.network.find_network("private")
        attrs.setdefault("networks", [{"uuid": network.id}])
        server = conn.compute.create_server(name=name, image_id=image.id, flavor_id="1", **attrs)
        if wait:
            server = conn.compute.wait_for_server(server, interval=POLL, wait=30)
        return server

    return _boot


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """A plain HTTP call (for raw-API checks), returning status, headers and JSON body."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - local sim
    req.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            raw = resp.read()
            status, hdrs = resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        raw = err.read()
        status, hdrs = err.code, dict(err.headers)
    text = raw.decode() if raw else ""
    try:
        parsed: Any = json.loads(text) if text else None
    except ValueError:
        parsed = text
    return status, hdrs, parsed


def token_for(sim: CloudSim, project: str = "demo") -> str:
    """A project-scoped token obtained with a raw password auth."""
    status, headers, _ = http(
        "POST",
        sim.auth_url + "/auth/tokens",
        {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": project,
                            "domain": {"name": "Default"},
                            "password": "password",
                        }
                    },
                },
                "scope": {"project": {"name": project, "domain": {"name": "Default"}}},
            }
        },
    )
    assert status == 201
    return headers["X-Subject-Token"]

"""Agreeing the compute microversion is bounded like every other call to the cloud.

The version document (``GET /`` on the compute endpoint) and, when that answers 404,
keystoneauth's version discovery both run within the center's ``timeout_s``; neither is
waited for while holding the session's lock, so a compute endpoint that drips its answer
(a tenant administrator may point ``auth_url`` at a Keystone of their own, whose catalog
names any endpoint) holds no other thread of the broker beyond its own deadline.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress

import pytest

from cloudsim.server import CloudSim
from deskbroker.centers.openstack.driver import OpenStackCenter
from deskbroker.centers.openstack.session import CloudFailure
from deskbroker.centers.registry import open_driver
from tests.tarpit import HTTP_HEAD, dripping, serving, tarpit

TIMEOUT_S = 2.0
SLACK_S = 1.0
# The second caller comes while the first one's call is still running.
SECOND_AFTER_S = 0.5

NOT_FOUND = b'{"itemNotFound": {"message": "The resource could not be found.", "code": 404}}'


@pytest.fixture(scope="module")
def sim() -> Iterator[CloudSim]:
    simulator = CloudSim(projects=["demo"]).start()
    yield simulator
    simulator.stop()


@contextmanager
def no_version_document(interval_s: float = 0.5) -> Iterator[str]:
    """The base URL of a compute endpoint whose ``GET /`` answers 404 (as one whose
    catalog URL names the project does) and whose every other answer, version discovery
    included, drips one byte per ``interval_s`` for ever: each read beats the read
    timeout, only a deadline on the whole call gives up on it."""

    def serve(conn: socket.socket, stopping: threading.Event) -> None:
        conn.settimeout(0.05)
        request = b""
        while b"\r\n\r\n" not in request:
            if stopping.is_set():
                return
            with suppress(TimeoutError):
                chunk = conn.recv(65536)
                if not chunk:
                    return
                request += chunk
        target = request.split(b" ", 2)[1].split(b"?")[0]
        if target.endswith(b"/"):
            head = (
                b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(NOT_FOUND)
            )
            with suppress(OSError):
                conn.sendall(head + NOT_FOUND)
            return
        dripping(conn, stopping, HTTP_HEAD, b" ", interval_s)

    with serving(serve) as port:
        yield f"http://127.0.0.1:{port}"


@contextmanager
def silent() -> Iterator[str]:
    """The base URL of a compute endpoint that accepts and never answers."""
    with tarpit() as pit:
        yield pit.url


@contextmanager
def compute_at(sim: CloudSim, driver: OpenStackCenter, base_url: str) -> Iterator[None]:
    """The driver's next token has a catalog naming ``base_url`` for compute (and the
    other services); Keystone itself stays cloudsim's."""
    assert sim.core is not None
    real = sim.core.base_url
    # Authenticated (and Keystone discovered) against the real catalog first.
    driver.session.every("/networks", "networks", {}, service="network")
    sim.core.base_url = base_url
    driver.session.connection().session.auth.invalidate()
    try:
        yield
    finally:
        sim.core.base_url = real


def _open(sim: CloudSim) -> OpenStackCenter:
    driver = open_driver(
        "openstack",
        {
            "auth_url": sim.auth_url,
            "project_name": "demo",
            "username": "demo",
            "timeout_s": TIMEOUT_S,  # also each read's timeout: a drip beats it
            "retry_base_s": 0.01,
        },
        {"password": "password"},
    )
    assert isinstance(driver, OpenStackCenter)
    return driver


class Caller:
    """``driver.session.compute`` asked on a thread of its own, timed."""

    def __init__(self, driver: OpenStackCenter) -> None:
        self.took: float | None = None
        self.error: BaseException | None = None
        self._driver = driver
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        try:
            _ = self._driver.session.compute
        except BaseException as exc:  # handed to the test
            self.error = exc
        self.took = time.monotonic() - started


def _two_callers(driver: OpenStackCenter) -> list[Caller]:
    """Two threads asking for the microversion, the second while the first waits; each
    given its deadline and some slack to end."""
    callers = [Caller(driver), Caller(driver)]
    callers[0].thread.start()
    time.sleep(SECOND_AFTER_S)
    callers[1].thread.start()
    for caller in callers:
        caller.thread.join(TIMEOUT_S + SLACK_S + 1.0)
    return callers


def _assert_each_given_up_on_at_its_deadline(callers: list[Caller], what: str) -> None:
    for n, caller in enumerate(callers, 1):
        assert not caller.thread.is_alive(), f"caller {n} still waits"
        assert caller.took is not None
        assert caller.took < TIMEOUT_S + SLACK_S, (n, caller.took)
        assert isinstance(caller.error, CloudFailure), (n, caller.error)
        assert caller.error.detail.startswith(what), caller.error.detail
        assert f"did not answer within {TIMEOUT_S:g} s" in caller.error.detail


@pytest.mark.parametrize(
    ("endpoint", "what"),
    [
        pytest.param(no_version_document, "discovering the compute API", id="discovery-drips"),
        pytest.param(silent, "GET the compute version document", id="compute-silent"),
    ],
)
def test_agreeing_the_microversion_holds_no_caller_beyond_its_deadline(
    sim: CloudSim, endpoint: Callable[[], AbstractContextManager[str]], what: str
) -> None:
    driver = _open(sim)
    with endpoint() as base_url, compute_at(sim, driver, base_url):
        callers = _two_callers(driver)
        _assert_each_given_up_on_at_its_deadline(callers, what)
    # Nothing failed is remembered: once the cloud answers, the microversion is agreed.
    driver.session.connection().session.auth.invalidate()
    assert driver.session.compute.header == "2.79"

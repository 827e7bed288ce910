"""Prometheus metrics, exposed at /metrics."""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

SQL_STATEMENTS = Counter("deskbroker_sql_statements", "SQL statements sent to the database")
LOGINS = Counter("deskbroker_logins", "Logins by result", ["result"])
LOGINS_THROTTLED = Counter(
    "deskbroker_logins_throttled", "Sign-ins refused while an account or address is locked", ["key"]
)
LOGIN_SECONDS = Histogram(
    "deskbroker_login_seconds",
    "Time spent in the login path",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
CLAIMS = Counter("deskbroker_claims", "Desktop claims by result", ["result"])
# The claim statement alone (login and queue service): flat whatever the pool's size.
CLAIM_SECONDS = Histogram(
    "deskbroker_claim_seconds",
    "Time spent in the claim statement",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
CONNECTIONS = Counter("deskbroker_connections", "Connection descriptors issued", ["protocol"])
HTTP_REQUESTS = Counter(
    "deskbroker_http_requests", "HTTP requests by route and status class", ["method", "status"]
)
HTTP_SHED = Counter(
    "deskbroker_http_shed",
    "Requests answered 503 because the worker already served its limit of requests at once",
)
HTTP_IN_FLIGHT = Gauge(
    "deskbroker_http_in_flight",
    "Requests the node is serving now",
    multiprocess_mode="livesum",
)

# Set (by ``serve --workers N``) before this module is first imported: every process of
# the node then writes its figures to files there, and /metrics sums them.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def exposition() -> bytes:
    """The node's metrics in the Prometheus text format: of this process, or summed over
    the node's processes when it runs several HTTP workers (whichever worker is asked,
    the answer is the node's)."""
    if not os.environ.get(MULTIPROCESS_ENV):
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)

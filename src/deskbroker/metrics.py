"""Prometheus metrics, exposed at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
CONNECTIONS = Counter("deskbroker_connections", "Connection descriptors issued", ["protocol"])
HTTP_REQUESTS = Counter(
    "deskbroker_http_requests", "HTTP requests by route and status class", ["method", "status"]
)

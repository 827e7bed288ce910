"""The process's opened center drivers, one per center, shared by every caller.

A driver holds an authenticated session (an OpenStack token, a vCenter login): opening
one per request would authenticate again on every connect and power action. Everything
that talks to a center (the engine's workers, start-on-connect, admin power actions,
scans, catalogs, probes) asks this cache, so the process authenticates once per center
until the center's connection settings change.
"""

from __future__ import annotations

import json
import threading

from deskbroker.centers import registry
from deskbroker.centers.base import CenterDriver
from deskbroker.security import SecretBox
from deskbroker.store.tables import Center

# What identifies a center's connection: a scan touching the row (cursor, status) must
# not throw away an authenticated session.
_Stamp = tuple[str, str | None, str]


def _stamp(center: Center) -> _Stamp:
    return (center.kind, center.secrets_sealed, json.dumps(center.params, sort_keys=True))


class CenterDrivers:
    """Opened drivers by center id, reopened when the center's kind, params or secrets
    change. Thread-safe: the engine's workers and the API's threads share it."""

    def __init__(self, secrets: SecretBox) -> None:
        self._secrets = secrets
        self._opened: dict[str, tuple[_Stamp, CenterDriver]] = {}
        self._lock = threading.Lock()

    def get(self, center: Center) -> CenterDriver:
        """The center's driver, opened at most once per connection setting."""
        stamp = _stamp(center)
        with self._lock:
            cached = self._opened.get(center.id)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            secrets: dict[str, str] = {}
            if center.secrets_sealed:
                secrets = json.loads(self._secrets.open(center.secrets_sealed))
            driver = registry.open_driver(center.kind, center.params or {}, secrets)
            driver.belongs_to(center.tenant_id)
            self._opened[center.id] = (stamp, driver)
            return driver

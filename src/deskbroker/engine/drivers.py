"""Center drivers opened once per center version and shared by the engine's workers."""

from __future__ import annotations

import json
import threading

from deskbroker.centers import registry
from deskbroker.centers.base import CenterDriver
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Center


class DriverCache:
    """Keeps a driver (and its authenticated session) per center until the center changes."""

    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx
        self._drivers: dict[str, tuple[object, CenterDriver]] = {}
        self._lock = threading.Lock()

    def get(self, center: Center) -> CenterDriver:
        stamp = (
            center.kind,
            center.updated_at,
            center.secrets_sealed,
            json.dumps(center.params, sort_keys=True),
        )
        with self._lock:
            cached = self._drivers.get(center.id)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            secrets: dict[str, str] = {}
            if center.secrets_sealed:
                secrets = json.loads(self.ctx.secrets.open(center.secrets_sealed))
            driver = registry.open_driver(center.kind, center.params or {}, secrets)
            self._drivers[center.id] = (stamp, driver)
            return driver

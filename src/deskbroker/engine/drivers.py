"""Center drivers opened once per center version and shared by the engine's workers."""

from __future__ import annotations

import json
import threading
import time

from deskbroker.centers import registry
from deskbroker.centers.base import CenterDriver
from deskbroker.engine.watch import BuildWatcher
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Center

CENTER_TTL_S = 5.0


class DriverCache:
    """Keeps a driver (and its authenticated session) per center until the center changes."""

    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx
        self._drivers: dict[str, tuple[object, CenterDriver]] = {}
        self._watchers: dict[str, BuildWatcher] = {}
        self._centers: dict[str, tuple[float, Center]] = {}
        self._by_row: dict[str, tuple[Center, CenterDriver]] = {}
        self._lock = threading.Lock()

    def get(self, center: Center) -> CenterDriver:
        with self._lock:
            known = self._by_row.get(center.id)
            if known is not None and known[0] is center:
                # The very row ``center`` handed out and this returned for before.
                return known[1]
        # Only what changes the connection counts: a scan touching the row must not
        # throw away an authenticated session (and the build watcher with it).
        stamp = (
            center.kind,
            center.secrets_sealed,
            json.dumps(center.params, sort_keys=True),
        )
        with self._lock:
            cached = self._drivers.get(center.id)
            if cached is not None and cached[0] == stamp:
                self._remember(center, cached[1])
                return cached[1]
            secrets: dict[str, str] = {}
            if center.secrets_sealed:
                secrets = json.loads(self.ctx.secrets.open(center.secrets_sealed))
            driver = registry.open_driver(center.kind, center.params or {}, secrets)
            self._drivers[center.id] = (stamp, driver)
            self._remember(center, driver)
            self._watchers.pop(center.id, None)
            return driver

    def _remember(self, center: Center, driver: CenterDriver) -> None:
        """Skip the stamp next time for a detached row of ``center``'s own cache (the
        steps of every build pass the same one for seconds)."""
        row = self._centers.get(center.id)
        if row is not None and row[1] is center:
            self._by_row[center.id] = (center, driver)

    def center(self, center_id: str) -> Center | None:
        """The center's row, read at most every few seconds: steps of many builds on
        one center should not each read it again."""
        now = time.monotonic()
        with self._lock:
            cached = self._centers.get(center_id)
            if cached is not None and now - cached[0] < CENTER_TTL_S:
                return cached[1]
        with self.ctx.db.read() as session:
            row = session.get(Center, center_id)
            if row is not None:
                session.expunge(row)
        if row is not None:
            with self._lock:
                self._centers[center_id] = (now, row)
        return row

    def watcher(self, center: Center) -> BuildWatcher:
        """The center's build watcher, sharing the center's driver."""
        driver = self.get(center)
        with self._lock:
            found = self._watchers.get(center.id)
            if found is None or found.driver is not driver:
                found = BuildWatcher(driver, self.ctx.settings.provision_poll_s)
                self._watchers[center.id] = found
            return found

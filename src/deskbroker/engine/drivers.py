"""The engine's center rows and build watchers over the broker's shared drivers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from deskbroker.centers.base import CenterDriver
from deskbroker.engine.turns import CenterTurns, tenant_reserve, tenant_share
from deskbroker.engine.watch import BuildWatcher
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Center

CENTER_TTL_S = 5.0


class DriverCache:
    """The engine's view of the broker's shared drivers (``ctx.drivers``), plus what
    only the engine needs: each center's row read at most every few seconds, and a
    build watcher per center sharing the center's driver, and the turns each center's
    work takes (``turns.CenterTurns``: the engine's own when it made this cache)."""

    def __init__(self, ctx: BrokerContext, turns: CenterTurns | None = None) -> None:
        self.ctx = ctx
        workers = ctx.settings.engine_workers
        share = tenant_share(workers, ctx.settings.engine_tenant_workers)
        self.turns = turns or CenterTurns(
            ctx.settings.engine_center_workers,
            share,
            workers=workers,
            reserve=tenant_reserve(workers, share),
        )
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
        driver = self.ctx.drivers.get(center)
        with self._lock:
            self._remember(center, driver)
        return driver

    def _remember(self, center: Center, driver: CenterDriver) -> None:
        """Skip the stamp next time for a detached row of ``center``'s own cache (the
        steps of every build pass the same one for seconds)."""
        row = self._centers.get(center.id)
        if row is not None and row[1] is center:
            self._by_row[center.id] = (center, driver)

    @contextmanager
    def turn(self, center_id: str) -> Iterator[bool]:
        """A turn of the center's share for a pool's or a removal's cloud calls: yields
        False, taking nothing, when the center's work (or its tenant's) holds its share
        already. The
        caller then leaves the calls for a later pass rather than hold a worker on a
        cloud that drips or never answers."""
        center = self.center(center_id)
        tenant = center.tenant_id if center is not None else ""
        took = self.turns.take(center_id, tenant)
        try:
            yield took
        finally:
            if took:
                self.turns.end(center_id, tenant)

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

"""Watches a center's builds with one listing for all of them.

Twenty builds in flight polled one by one cost twenty requests (and forty database
transactions) per round; a watcher asks the center once for everything changed since its
last look and the engine wakes only the builds that finished. It also learns how long
builds take, so a build nobody woke is looked at when it is likely done.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from deskbroker.centers.base import Capability, CenterDriver, MachineInfo
from deskbroker.domain.states import PowerState


class BuildWatcher:
    """Per-center, in memory: a hint cache, never the source of truth."""

    def __init__(self, driver: CenterDriver, min_interval_s: float) -> None:
        self.driver = driver
        self.min_interval_s = min_interval_s
        self.expected_build_s: float | None = None
        self._cursor: str | None = None
        self._seen: dict[str, MachineInfo] = {}
        self._gone: set[str] = set()
        self._last = 0.0
        self._lock = threading.Lock()
        # Builds requested before this moment may have changed unseen: poll them directly.
        self.watching_since: datetime | None = None

    @property
    def can_watch(self) -> bool:
        return Capability.CHANGES in self.driver.capabilities

    def start_cursor(self) -> None:
        """Remember where to list from; called before a build is requested."""
        with self._lock:
            if self._cursor is None and self.can_watch:
                # An empty listing from the far future still tells the center's clock.
                self._cursor = self.driver.changes("2999-01-01T00:00:00Z").cursor
                self.watching_since = datetime.now(UTC)

    def refresh(self) -> list[str]:
        """List what changed since the last look, at most once per interval; returns the
        ids of builds that finished (running, failed or gone) so they can be woken."""
        if not self.can_watch or self._cursor is None:
            return []
        with self._lock:
            if time.monotonic() - self._last < self.min_interval_s:
                return []
            seen = self.driver.changes(self._cursor)
            self._last = time.monotonic()
            # Keep the window small: the next listing starts from now (cloud time).
            self._cursor = seen.cursor or self._cursor
            for machine in seen.machines:
                self._seen[machine.external_id] = machine
            self._gone.update(seen.gone)
        done = [
            m.external_id
            for m in seen.machines
            if m.power_state in (PowerState.RUNNING, PowerState.ERROR)
        ]
        return done + list(seen.gone)

    def look(self, external_id: str) -> MachineInfo | None:
        """The newest state seen for a build, or ``None`` when there is no news."""
        with self._lock:
            if external_id in self._gone:
                return MachineInfo(external_id=external_id, name="", attributes={"gone": True})
            return self._seen.pop(external_id, None)

    def learned(self, seconds: float) -> None:
        """Fold one finished build's duration into the expectation."""
        with self._lock:
            previous = self.expected_build_s
            self.expected_build_s = seconds if previous is None else 0.8 * previous + 0.2 * seconds

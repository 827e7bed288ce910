"""Watches a center's builds with one listing for all of them.

Twenty builds in flight polled one by one cost twenty requests (and forty database
transactions) per round; a watcher asks the center once for everything changed since its
last look and the engine finishes the builds that finished, together.

It also learns when to look: builds this broker asked for are looked for when they are
likely done (a *lead* after their request, adjusted after every look: later when a
build was not done yet, a little earlier when all were), builds started close together
with one listing. Builds it does not know of (another broker's, or from before a
restart) are listed for every poll interval, as is any build overdue. Listings are never
closer than the poll interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from deskbroker.centers.base import Capability, CenterDriver, MachineInfo
from deskbroker.domain.states import PowerState

# How many listings a finished machine is offered to the engine (and a handled one is
# kept from being offered again): longer than a changes-since window stays open.
KEEP_LISTINGS = 50
# Builds expected within this share of the poll interval of each other share a listing.
GROUP_SHARE = 0.5
# Never longer than this without a listing while builds are out.
MAX_QUIET_S = 2.0
# How often a finished build of this broker's that no task has yet is offered again.
REOFFERS = 20
# Changes since a moment the center has not reached: none, but the center's clock.
FAR_FUTURE = "2999-01-01T00:00:00Z"


@dataclass
class _Build:
    asked_at: float  # monotonic, just before the creation was asked for
    judged: bool = False  # a listing after its expected end has told whether it was done


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
        self._listings = 0
        # Finished machines not yet handled, and handled ones, with their listing number.
        self._finished: dict[str, tuple[MachineInfo, int]] = {}
        self._settled: dict[str, int] = {}
        # Builds this broker asked for and has not seen finish; when after its request
        # a build is looked for.
        self._building: dict[str, _Build] = {}
        # Builds this broker asked for, until handled, with their listing number and how
        # often more a finished one no task has is offered: its creation may still be
        # being recorded. Anyone else's machine that no task has is offered once.
        self._mine: dict[str, list[int]] = {}
        self.lead_s: float | None = None
        self._lock = threading.Lock()
        self._listing = False  # a listing is out (one at a time)
        self._starting = False  # the cursor is being asked for (by one thread at a time)
        self._started = threading.Condition(self._lock)
        # Builds requested before this moment may have changed unseen: poll them directly.
        self.watching_since: datetime | None = None

    @property
    def can_watch(self) -> bool:
        return Capability.CHANGES in self.driver.capabilities

    def start_cursor(self) -> None:
        """Remember where to list from; called before a build is requested.

        One thread asks the center; others starting builds meanwhile wait for its answer
        (and ask themselves only if it failed), so each returns with a cursor taken
        before its build is requested. The center is asked with the lock let go: one
        that never answers holds this build's worker, not the engine's loop, which reads
        the watcher every tick."""
        if self._cursor is not None or not self.can_watch:
            return
        with self._lock:
            while self._cursor is None and self._starting:
                self._started.wait()  # lets go of the lock while it waits
            if self._cursor is not None:
                return
            self._starting = True
        cursor: str | None = None
        asked = False
        try:
            # An empty listing from the far future still tells the center's clock.
            cursor = self.driver.changes(FAR_FUTURE).cursor
            asked = True
        finally:
            with self._lock:
                self._starting = False
                # Never over a cursor a listing has moved on since.
                if asked and self._cursor is None:
                    self._cursor = cursor
                    self.watching_since = datetime.now(UTC)
                self._started.notify_all()

    def building(self, external_id: str, asked_at: float) -> None:
        """A build this broker asked for at ``asked_at`` (``time.monotonic()``)."""
        with self._lock:
            self._building[external_id] = _Build(asked_at)
            self._mine[external_id] = [self._listings, REOFFERS]

    def adopted(self, machine: MachineInfo) -> None:
        """A build found by its tag (a creation resumed after a crash or an unknown
        outcome), as the lookup saw it: the news of a listing. A listing from a cursor
        taken after the machine's last change would never show it, and the build would
        wait for the step's slow direct look (half a minute) although it finished."""
        with self._lock:
            self._seen[machine.external_id] = machine
            if machine.power_state in (PowerState.RUNNING, PowerState.ERROR):
                self._settled.pop(machine.external_id, None)
                self._finished[machine.external_id] = (machine, self._listings)

    def next_listing(self, waiting: int) -> float:
        """When (``time.monotonic()``) a listing is worth making, with ``waiting`` builds
        of this center waiting in the database; never when it cannot list."""
        with self._lock:
            return self._next_listing(waiting)

    def _next_listing(self, waiting: int) -> float:
        if not self.can_watch or self._cursor is None:
            return float("inf")  # nothing to list from: the builds are polled one by one
        soonest = self._last + self.min_interval_s
        lead = self.lead_s
        if lead is None or waiting > len(self._building) or not self._building:
            return soonest  # builds it knows nothing of: every poll interval
        expected = sorted(b.asked_at + lead for b in self._building.values() if not b.judged)
        if len(expected) < len(self._building):
            return soonest  # an overdue build
        until = expected[0]
        for moment in expected:
            if moment - expected[0] > GROUP_SHARE * self.min_interval_s:
                break
            until = moment
        return max(soonest, min(until, self._last + MAX_QUIET_S))

    def refresh(self, waiting: int | None = None) -> bool:
        """List what changed since the last look, when a listing is due (at most once
        per interval); what finished (running, failed or gone) is then offered by
        ``finished``. Returns whether it listed."""
        if not self.can_watch or self._cursor is None:
            return False
        with self._lock:
            asked = time.monotonic()
            due = self._last + self.min_interval_s
            if waiting is not None:
                due = self._next_listing(waiting)
            if asked < due or self._listing:
                return False
            self._last = asked  # a failed listing is not retried before the interval
            self._listing = True
            cursor = self._cursor
        try:
            # Asked with the lock let go: a cloud slow to list must not stall the steps
            # and the hand-over that read what earlier listings saw.
            seen = self.driver.changes(cursor)
        finally:
            with self._lock:
                self._listing = False
        with self._lock:
            self._listings += 1
            # Keep the window small: the next listing starts from now (cloud time).
            self._cursor = seen.cursor or self._cursor
            self._take(seen.machines, seen.gone, asked)
        return True

    def _take(self, machines: list[MachineInfo], gone: list[str], asked: float) -> None:
        number = self._listings
        done: set[str] = set(gone)
        for machine in machines:
            self._seen[machine.external_id] = machine
            if machine.power_state in (PowerState.RUNNING, PowerState.ERROR):
                done.add(machine.external_id)
                if machine.external_id not in self._settled:
                    first = self._finished.get(machine.external_id, (machine, number))[1]
                    self._finished[machine.external_id] = (machine, first)
        for external_id in gone:
            self._gone.add(external_id)
            if external_id not in self._settled:
                lost = MachineInfo(external_id=external_id, name="", gone=True)
                self._finished[external_id] = (lost, number)
        self._judge(done, asked)
        horizon = number - KEEP_LISTINGS
        if any(n < horizon for _, n in self._finished.values()):
            self._finished = {k: v for k, v in self._finished.items() if v[1] >= horizon}
        if any(n < horizon for n in self._settled.values()):
            self._settled = {k: n for k, n in self._settled.items() if n >= horizon}
        if any(n < horizon for n, _ in self._mine.values()):
            self._mine = {k: v for k, v in self._mine.items() if v[0] >= horizon}

    def _judge(self, done: set[str], asked: float) -> None:
        """Builds expected done by this listing: look later next time if one was not,
        a little earlier if all were. The first finished build sets the lead."""
        lead = self.lead_s
        if lead is None:
            spans = [asked - b.asked_at for k, b in self._building.items() if k in done]
            if spans:
                self.lead_s = min(spans)
        else:
            expected = [
                k for k, b in self._building.items() if not b.judged and b.asked_at + lead <= asked
            ]
            if expected:
                if all(k in done for k in expected):
                    self.lead_s = max(self.min_interval_s, lead - max(0.005, 0.01 * lead))
                else:
                    self.lead_s = lead + self.min_interval_s / 2
                for k in expected:
                    self._building[k].judged = True
        for k in done:
            self._building.pop(k, None)

    def finished(self) -> dict[str, MachineInfo]:
        """Builds seen finished and not yet handled, by external id."""
        with self._lock:
            return {k: m for k, (m, _) in self._finished.items()}

    def settle(
        self, done: Iterable[str], woken: Iterable[str], unknown: Iterable[str] = ()
    ) -> None:
        """Stop offering builds the engine handled: ``done`` ones are finished (and
        forgotten), ``woken`` ones will ``look`` at what was seen. Of the ``unknown``
        (no task has them), only this broker's own builds are offered again: their
        creation may still be being recorded."""
        with self._lock:
            for external_id in done:
                self._seen.pop(external_id, None)
            dropped: list[str] = []
            for external_id in unknown:
                mine = self._mine.get(external_id)
                if mine is not None:
                    mine[1] -= 1
                if mine is None or mine[1] <= 0:
                    dropped.append(external_id)
            for external_id in (*done, *woken, *dropped):
                self._finished.pop(external_id, None)
                self._building.pop(external_id, None)
                self._mine.pop(external_id, None)
                self._settled[external_id] = self._listings

    def look(self, external_id: str) -> MachineInfo | None:
        """The newest state seen for a build, or ``None`` when there is no news."""
        with self._lock:
            if external_id in self._gone:
                return MachineInfo(external_id=external_id, name="", gone=True)
            return self._seen.pop(external_id, None)

    def learned(self, seconds: float) -> None:
        """Fold one finished build's duration into the expectation."""
        with self._lock:
            previous = self.expected_build_s
            self.expected_build_s = seconds if previous is None else 0.8 * previous + 0.2 * seconds

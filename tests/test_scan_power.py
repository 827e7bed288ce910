"""The power state a center's report records: a domain rule (domain/scans.py), which the
scan's bulk write (store/desktop_sync.py) and start-on-connect both apply."""

from __future__ import annotations

from deskbroker.domain.scans import next_power
from deskbroker.domain.states import PowerState


def test_a_move_the_power_table_allows_is_recorded() -> None:
    assert next_power("stopped", PowerState.RUNNING) == "running"
    assert next_power("running", PowerState.RUNNING) == "running"
    # A state the broker does not know (an older value) is read as unknown, which may go
    # anywhere.
    assert next_power("no-such-state", PowerState.SUSPENDED) == "suspended"


def test_an_unexpected_jump_passes_through_unknown() -> None:
    # deleting -> running is not in the table: the scan records unknown, not running.
    assert next_power("deleting", PowerState.RUNNING) == "unknown"
    # deleted is final.
    assert next_power("deleted", PowerState.RUNNING) == "unknown"

"""One helper reads a stored time as aware UTC (domain/timestamps.aware), not a copy per
module: SQLite hands back naive datetimes, PostgreSQL aware ones."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from deskbroker.domain.timestamps import aware

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "deskbroker"
# Where a naive time may be given a zone: the helper itself, and the column type that
# stores every time as UTC.
ALLOWED = {"domain/timestamps.py", "store/tables/base.py"}


def test_a_naive_time_is_utc() -> None:
    assert aware(datetime(2026, 1, 2, 3, 4, 5)) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert aware(datetime(2026, 1, 2, 3, 4, 5)).tzinfo is UTC


def test_an_aware_time_is_kept_as_it_is() -> None:
    paris = timezone(timedelta(hours=1))
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=paris)
    assert aware(moment) is moment


def test_no_module_copies_the_helper() -> None:
    copies = [
        relative
        for path in sorted(PACKAGE.rglob("*.py"))
        if (relative := path.relative_to(PACKAGE).as_posix()) not in ALLOWED
        and re.search(r"\.replace\(tzinfo=UTC\)|tzinfo=utcnow\(\)\.tzinfo", path.read_text())
    ]
    assert copies == []

"""Stored times, compared as aware UTC datetimes."""

from __future__ import annotations

from datetime import UTC, datetime


def aware(moment: datetime) -> datetime:
    """``moment`` as an aware datetime. SQLite hands back naive datetimes, and every time
    the broker writes is UTC, so a naive one is UTC; an aware one is returned as it is."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

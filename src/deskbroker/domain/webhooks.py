"""Events out: which event kinds a webhook may choose, how a delivery is signed and
verified, when a failed one is tried again, and a tenant's monthly usage figures.

Pure rules, no I/O: the store fans events out into deliveries, the engine posts them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from deskbroker.domain.timestamps import aware

# The headers of a delivery (documented in docs/events.md).
EVENT_ID_HEADER = "Deskbroker-Event-Id"
TIMESTAMP_HEADER = "Deskbroker-Timestamp"
SIGNATURE_HEADER = "Deskbroker-Signature"
SIGNATURE_SCHEME = "v1"
# A receiver should refuse a delivery whose timestamp is further than this from its clock
# (a replayed old delivery); the broker's own verify() uses the same default.
DEFAULT_TOLERANCE_S = 300
# The test event an administrator sends to one webhook; it goes to that webhook only.
TEST_KIND = "webhook.test"


class Category(StrEnum):
    """What a webhook subscribes to: a family of event-log kinds."""

    LOGIN = "login"
    ASSIGNMENT = "assignment"
    CONNECT = "connect"
    SESSION = "session"
    PROVISIONING_FAILED = "provisioning_failed"
    CENTER_DEGRADED = "center_degraded"
    QUOTA_REACHED = "quota_reached"


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


# Event-log kinds by category; a kind not listed goes to no webhook (admin changes,
# agent enrolment...). Session kinds are matched by prefix ("session.logged_in"...).
_EXACT: dict[str, Category] = {
    "login": Category.LOGIN,
    "login_failed": Category.LOGIN,
    "logout": Category.LOGIN,
    "assign": Category.ASSIGNMENT,
    "release": Category.ASSIGNMENT,
    "connect": Category.CONNECT,
    "connect.failed": Category.CONNECT,
    "provision.failed": Category.PROVISIONING_FAILED,
    "center.degraded": Category.CENTER_DEGRADED,
    "quota.reached": Category.QUOTA_REACHED,
}


def category(kind: str) -> Category | None:
    """The category an event-log kind belongs to, or ``None`` when no webhook gets it."""
    if kind.startswith("session."):
        return Category.SESSION
    return _EXACT.get(kind)


def chosen(kinds: Iterable[str]) -> list[str]:
    """A webhook's kinds checked and put in a stable order; raises ValueError in words."""
    out: list[str] = []
    known = [c.value for c in Category]
    for kind in kinds:
        if kind not in known:
            raise ValueError(f"unknown event kind {kind!r}; kinds: {', '.join(known)}")
        if kind not in out:
            out.append(kind)
    if not out:
        raise ValueError(f"choose at least one event kind: {', '.join(known)}")
    return sorted(out, key=known.index)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: ``v1=`` and the hex HMAC-SHA256, keyed with the
    webhook's secret, of ``"<timestamp>." + body``. Signing the timestamp with the body
    lets a receiver refuse an old delivery replayed with its valid signature."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SIGNATURE_SCHEME}={mac.hexdigest()}"


def verify(
    secret: str,
    timestamp: str,
    header: str,
    body: bytes,
    now: datetime,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> bool:
    """What a receiver does: the timestamp is recent and one of the header's
    comma-separated ``v1=`` signatures matches (compared in constant time)."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    if abs(now.timestamp() - stamp) > tolerance_s:
        return False
    expected = signature(secret, stamp, body)
    return any(hmac.compare_digest(expected, part.strip()) for part in header.split(","))


def next_attempt(attempts: int, base_s: float, cap_s: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: ``base_s`` doubled each
    time (1x, 2x, 4x...), at most ``cap_s``."""
    return float(min(cap_s, base_s * 2.0 ** min(max(attempts - 1, 0), 30)))


# --- usage ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """One session: on which desktop, from when until when (``None``: still open)."""

    desktop_id: str
    start: datetime
    end: datetime | None


@dataclass(frozen=True)
class Usage:
    """A tenant's figures for one month."""

    month: str
    sessions: int
    session_hours: float
    desktop_hours: float
    desktops: int
    peak_concurrent_sessions: int
    peak_at: datetime | None


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """``YYYY-MM`` as its first moment and the first moment of the next month (UTC);
    raises ValueError in words."""
    try:
        start = aware(datetime.strptime(month, "%Y-%m"))
    except ValueError:
        raise ValueError(f"month must be written YYYY-MM, e.g. 2026-11, not {month!r}") from None
    after = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, after


def _merged(spans: list[tuple[datetime, datetime]]) -> timedelta:
    """The time the union of ``spans`` covers."""
    total = timedelta()
    current: tuple[datetime, datetime] | None = None
    for start, end in sorted(spans):
        if current is None or start > current[1]:
            if current is not None:
                total += current[1] - current[0]
            current = (start, end)
        else:
            current = (current[0], max(current[1], end))
    if current is not None:
        total += current[1] - current[0]
    return total


def usage(month: str, sessions: Sequence[Interval], now: datetime) -> Usage:
    """The month's figures from its sessions, each clipped to the month (and an open one
    to ``now``):

    - session hours: the sum of the sessions' lengths;
    - desktop hours: per desktop, the time at least one session was open on it (two
      sessions at once on one desktop count once), summed over the desktops;
    - peak concurrent sessions: the most sessions open at one moment, and its first
      moment (a session ending exactly when another starts does not overlap it).
    """
    start, after = month_bounds(month)
    clipped: list[tuple[str, datetime, datetime]] = []
    for s in sessions:
        begin = max(s.start, start)
        end = min(s.end or now, after, now)
        if end > begin:
            clipped.append((s.desktop_id, begin, end))
    session_time = sum((end - begin for _, begin, end in clipped), timedelta())
    per_desktop: dict[str, list[tuple[datetime, datetime]]] = {}
    for desktop, begin, end in clipped:
        per_desktop.setdefault(desktop, []).append((begin, end))
    desktop_time = sum((_merged(spans) for spans in per_desktop.values()), timedelta())
    # Ends sort before starts at the same moment (-1 before +1).
    edges = sorted(
        [(begin, 1) for _, begin, _ in clipped] + [(end, -1) for _, _, end in clipped],
        key=lambda edge: (edge[0], edge[1]),
    )
    peak, open_now, peak_at = 0, 0, None
    for moment, step in edges:
        open_now += step
        if open_now > peak:
            peak, peak_at = open_now, moment
    return Usage(
        month=month,
        sessions=len(clipped),
        session_hours=round(session_time.total_seconds() / 3600, 4),
        desktop_hours=round(desktop_time.total_seconds() / 3600, 4),
        desktops=len(per_desktop),
        peak_concurrent_sessions=peak,
        peak_at=peak_at,
    )

"""What the broker records of a center's report: the power state it saw, and when a full
listing is trusted to say that machines are gone."""

from __future__ import annotations

from deskbroker.domain.states import PowerState, observe

# A full listing that sees fewer than this share of the machines the broker knows looks
# short: the center is reported degraded.
SHORTFALL_RATIO = 0.5


def looks_short(known: int, seen: int, ratio: float = SHORTFALL_RATIO) -> bool:
    """A listing of ``seen`` machines where the broker knows ``known``: far fewer is more
    likely a cloud that pages, filters or half-answers than half a fleet gone at once."""
    return known > 0 and seen < known * ratio


def hold_removals(*, authoritative: bool) -> bool:
    """Whether a full listing's silence about a machine needs a second look: of the
    machines it did not see, only those the previous full listing missed as well (two
    looks that agree) may go. A cloud's listing can miss servers however many it shows
    (a page cut short, a cell that does not answer), so every cloud's listing is held.

    ``authoritative``: the listing is the broker's own (a static center's params), so a
    shorter list is the operator's word and is believed at once.
    """
    return not authoritative


def next_power(current: str, reported: PowerState) -> str:
    """The power state a center's report (a scan, a start) records: the reported one
    when the power table allows the move, else ``unknown`` (an unexpected jump)."""
    return observe(current, reported).value

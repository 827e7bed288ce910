"""A pool's status for its administrator: its desktops counted, and one sentence."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from deskbroker.domain.quotas import words as quota_words
from deskbroker.domain.states import ProvisioningState

# A build under way: not yet a desktop, not yet failed or given up.
_BUILDING = (
    ProvisioningState.REQUESTED,
    ProvisioningState.CREATING,
    ProvisioningState.WAITING,
    ProvisioningState.ADDRESSING,
)


def status_counts(
    desktops: Iterable[tuple[str, str, bool, int]],
    *,
    free: int,
    queued: int,
    tasks: Mapping[str, int],
    in_session: int,
) -> dict[str, int]:
    """The counts of the status. ``desktops``: the members counted by (power state,
    availability, assigned); ``free``: what a login could be given now (the claim's
    definition, which alone says "available"); ``tasks``: the builds by state."""
    counts = {
        "total": 0,
        "available": free,
        "assigned": 0,
        "unavailable": 0,
        "running": 0,
        "stopped": 0,
        "suspended": 0,
        "building": 0,
        "error": 0,
    }
    for power, availability, assigned, n in desktops:
        counts["total"] += n
        if assigned:
            counts["assigned"] += n
        if availability != "available":
            counts["unavailable"] += n
        if power in counts:
            counts[power] += n
    counts["queued"] = queued
    counts["provisioning"] = sum(int(tasks.get(s.value, 0)) for s in _BUILDING)
    counts["failed"] = int(tasks.get(ProvisioningState.FAILED.value, 0))
    counts["in_session"] = in_session
    return counts


def status_words(
    counts: Mapping[str, int],
    *,
    build_failures: int,
    last_error: str,
    tenant_desktops: tuple[int, int] | None,
) -> str:
    """The status in one sentence; ``tenant_desktops``: (used, limit) of the tenant's
    desktop quota when it has one (a full tenant explains a pool that stopped)."""
    words = (
        f"{counts['total']} desktops: {counts['assigned']} assigned, "
        f"{counts['available']} free, {counts['in_session']} in session, "
        f"{counts['provisioning']} being built, {counts['failed']} failed builds, "
        f"{counts['queued']} users waiting"
    )
    if build_failures:
        n = build_failures
        words += f"; {n} build{'s' * (n != 1)} failed in a row, first: {last_error}"
    elif last_error:
        words += f"; last error: {last_error}"
    if tenant_desktops is not None:
        used, limit = tenant_desktops
        words += f"; {quota_words(used, limit, 'desktops')}"
    return words

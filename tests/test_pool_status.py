"""A pool's status for its administrator (domain.pool_status): what each count means and
the sentence that says it."""

from __future__ import annotations

from deskbroker.domain.pool_status import status_counts, status_words


def test_available_is_the_claims_free_count_not_the_availability_column() -> None:
    counts = status_counts(
        [
            ("running", "available", False, 3),
            ("running", "available", True, 2),
            ("stopped", "unavailable", False, 1),
            ("deleting", "available", False, 4),
        ],
        free=2,
        queued=5,
        tasks={"requested": 1, "creating": 1, "waiting": 1, "addressing": 1, "failed": 2},
        in_session=2,
    )
    assert counts == {
        "total": 10,
        "available": 2,
        "assigned": 2,
        "unavailable": 1,
        "running": 5,
        "stopped": 1,
        "suspended": 0,
        "building": 0,
        "error": 0,
        "queued": 5,
        "provisioning": 4,
        "failed": 2,
        "in_session": 2,
    }
    # The keys keep the order the API has always answered in.
    assert list(counts)[:2] == ["total", "available"]


def _counts() -> dict[str, int]:
    return status_counts(
        [("running", "available", False, 3)], free=3, queued=1, tasks={}, in_session=0
    )


def test_words_name_failures_in_a_row_and_the_tenant_quota() -> None:
    base = (
        "3 desktops: 0 assigned, 3 free, 0 in session, 0 being built, 0 failed builds, "
        "1 users waiting"
    )
    assert status_words(_counts(), build_failures=0, last_error="", tenant_desktops=None) == base
    assert (
        status_words(_counts(), build_failures=1, last_error="no quota", tenant_desktops=None)
        == base + "; 1 build failed in a row, first: no quota"
    )
    assert (
        status_words(_counts(), build_failures=3, last_error="no quota", tenant_desktops=(9, 10))
        == base + "; 3 builds failed in a row, first: no quota; tenant quota: 9 of 10 desktops"
    )
    assert (
        status_words(_counts(), build_failures=0, last_error="flavor gone", tenant_desktops=None)
        == base + "; last error: flavor gone"
    )

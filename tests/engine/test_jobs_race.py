"""Two engines keeping the jobs in line with the centers and pools at once (every engine
of a cluster does it when the configuration changes). On PostgreSQL each statement sees
what had committed when it began: both engines found a new pool's jobs missing and the
later one failed on the duplicate; and an engine that read the pools before a pool was
made, and the jobs after another engine made that pool's, deleted them as stale. Now the
later insert skips what is there, and the jobs are read before the pools. On SQLite the
one writer serialises the two; the tests hold there too."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select

from deskbroker.services.context import BrokerContext
from deskbroker.store import jobs
from deskbroker.store.tables import Job
from tests.helpers import Api
from tests.races import Seam, while_held

_POOL_KINDS = {
    jobs.JobKind.POOL_PROVISION.value,
    jobs.JobKind.POOL_STATS.value,
    jobs.JobKind.POOL_ROLLOUT.value,
}


@pytest.fixture
def other_broker(ctx: BrokerContext) -> Iterator[BrokerContext]:
    """A second broker on the same database: its own engine and connections."""
    other = BrokerContext.from_settings(ctx.settings)
    yield other
    other.db.dispose()


def _jobs(ctx: BrokerContext) -> Counter[tuple[str, str]]:
    with ctx.db.read() as session:
        return Counter(
            (kind, target) for kind, target in session.execute(select(Job.kind, Job.target_id))
        )


def _held_after_the_reads(monkeypatch: pytest.MonkeyPatch) -> Seam:
    # The centers and pools are read (after the jobs); the writes come next.
    seam = Seam()
    seam.after(monkeypatch, jobs, "_wanted")
    return seam


def _ensure_on(
    ctx: BrokerContext, made: list[int], failed: list[BaseException]
) -> Callable[[], None]:
    def run() -> None:
        try:
            with ctx.db.write() as session:
                made.append(jobs.ensure_jobs(session, jobs.Intervals()))
        except Exception as exc:  # the assertion below names it
            failed.append(exc)

    return run


def test_two_engines_making_the_same_jobs_both_commit(
    api: Api, ctx: BrokerContext, other_broker: BrokerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = api.seed_pool(1)
    seam = _held_after_the_reads(monkeypatch)
    made: list[int] = []
    failed: list[BaseException] = []
    while_held(
        seam,
        _ensure_on(other_broker, made, failed),
        _ensure_on(ctx, made, failed),
        other_ends_first=ctx.db.is_postgres,
    )
    assert failed == []
    found = _jobs(ctx)
    assert set(found.values()) == {1}
    assert {k for k, t in found if t == ids["pool"]} == _POOL_KINDS
    # Each job made once: by whichever engine committed first.
    assert sorted(made) == [0, len(found)]


def test_a_pool_made_while_an_engine_checks_the_jobs_keeps_its_jobs(
    api: Api, ctx: BrokerContext, other_broker: BrokerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = api.seed_pool(1)
    with ctx.db.write() as session:
        jobs.ensure_jobs(session, jobs.Intervals())
    seam = _held_after_the_reads(monkeypatch)
    made: list[int] = []
    failed: list[BaseException] = []
    pool: dict[str, Any] = {}
    ensure_here = _ensure_on(ctx, made, failed)

    def make_pool_and_its_jobs() -> None:
        # An administrator's new pool, then another engine's check that makes its jobs.
        pool.update(api.post("pools", {"name": "more", "center_ids": [ids["center"]]}))
        ensure_here()

    while_held(
        seam,
        _ensure_on(other_broker, made, failed),
        make_pool_and_its_jobs,
        other_ends_first=ctx.db.is_postgres,
    )
    assert failed == []
    assert {k for k, t in _jobs(ctx) if t == pool["id"]} == _POOL_KINDS

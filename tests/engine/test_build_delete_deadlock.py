"""A build step recording its outcome while an administrator deletes the pool or the
center it builds for. On PostgreSQL a delete locks the row it deletes and then, by the
foreign keys, the rows that refer to it: a pool, then its build tasks (``ON DELETE SET
NULL``); a center's desktops, then their build tasks (``SET NULL``), then the center and
its tasks (``CASCADE``). A step that wrote its task's row first and then the pool's (a
build that failed for good, or that the cloud refused for its quota) or the desktop's
(the instance's id, once the cloud made it; a failed build's desktop deleted) took the
same rows in the other order: each waited for the other, and PostgreSQL rolled one back
(the delete answered 503, or the engine's unit failed). Now the step takes them in the
delete's order, and the delete waits for it; both go through. On SQLite one writer
serialises the two units; the tests hold there too."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, text

from cloudsim.server import CloudSim
from deskbroker.engine.builds import TaskStep
from deskbroker.engine.provisioner import reconcile_pool
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Center, Desktop, Pool, ProvisioningTask
from deskbroker.store.tasks import TaskRow, claim_builds
from tests.engine.conftest import openstack_center, provisioning_pool
from tests.helpers import Api
from tests.races import Seam, while_held

OWNER = "builder:00000001"
# The quota the module's cloud starts with (``tests/engine/conftest.sim``).
ROOMY = 500
# A build that fails for good: the cloud has no image of this name.
NO_SUCH_IMAGE = "no-such-image"


def _until_another_waits_for_a_lock(ctx: BrokerContext) -> None:
    """On PostgreSQL, until another unit waits for a lock: the delete may take longer
    than the seam's wait to reach the row the held unit has, on a busy machine."""
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + 30
    with ctx.db.engine.connect() as conn:
        while not conn.execute(waiting).scalar():
            assert time.monotonic() < deadline, "the delete never waited for the build"
            time.sleep(0.05)
            conn.rollback()


@contextmanager
def held_after_its_outcome(seam: Seam, ctx: BrokerContext) -> Iterator[None]:
    """The held build stops just after the statement that lets its task's lease go,
    which writes the step's outcome on the task's row, its unit still open: every other
    row the unit writes, it writes after this unless it locked it before. It goes on
    once the other unit waits for it (on PostgreSQL, for one of its locks)."""

    def after(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        setting = statement.split(" WHERE ", 1)[0]
        if setting.startswith("UPDATE provisioning_tasks SET") and " lease_owner=" in setting:
            seam.stop()
            if threading.current_thread() is seam.thread and ctx.db.is_postgres:
                _until_another_waits_for_a_lock(ctx)

    event.listen(ctx.db.engine, "after_cursor_execute", after)
    try:
        yield
    finally:
        event.remove(ctx.db.engine, "after_cursor_execute", after)


@pytest.fixture
def no_room(sim: CloudSim) -> Iterator[None]:
    """The cloud refuses every new instance for its quota (the module's cloud is shared:
    its room comes back after the test)."""
    sim.set_quota("demo", instances=0)
    yield
    sim.set_quota("demo", instances=ROOMY)


def _claimed_build(
    api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext, *, image: str | None = None
) -> tuple[str, str, TaskRow]:
    """A pool wanting one desktop, its build requested and claimed by ``OWNER`` (as the
    engine claims it, ``creating``): the center's id, the pool's, and the task."""
    center = openstack_center(api, sim)
    extra: dict[str, Any] = {}
    if image is not None:
        extra["parameters"] = {
            "name_template": "vdi-{SEQUENCE:3}",
            "image": image,
            "flavor": "m1.tiny",
        }
    pool = provisioning_pool(api, center["id"], n=1, m=1, **extra)
    assert reconcile_pool(ctx, engine.drivers, pool["id"], datetime.now(UTC)).endswith(
        "requested 1 more"
    )
    with ctx.db.connect_write() as conn:
        (task,) = claim_builds(
            conn, center["id"], limit=10, most=10, owner=OWNER, now=datetime.now(UTC), ttl_s=60
        )
    assert task.desktop_id is not None
    return str(center["id"]), str(pool["id"]), task


def _building(step: TaskStep, failed: list[BaseException]) -> Callable[[], None]:
    """The step asks the cloud for its build and records what came of it; whatever it
    raised is kept for the test to name."""

    def build() -> None:
        try:
            step.build()
        except Exception as exc:
            failed.append(exc)

    return build


def _deleting(api: Api, path: str, answers: dict[str, httpx.Response]) -> Callable[[], None]:
    def delete() -> None:
        answers["delete"] = api.client.delete(f"/api/v1/admin/{path}", headers=api.headers)

    return delete


def _task(ctx: BrokerContext, task_id: str) -> ProvisioningTask | None:
    with ctx.db.read() as session:
        row = session.get(ProvisioningTask, task_id)
        if row is not None:
            session.expunge(row)
        return row


def _exists(ctx: BrokerContext, model: type[Any], row_id: str | None) -> bool:
    with ctx.db.read() as session:
        return session.scalar(select(model.id).where(model.id == row_id)) is not None


@pytest.mark.parametrize(
    ("failure", "task_ends"),
    [("fails for good", "failed"), ("over quota", "cancelled")],
)
def test_a_pool_deleted_while_its_build_fails_both_go_through(
    api: Api,
    sim: CloudSim,
    engine: Engine,
    ctx: BrokerContext,
    request: pytest.FixtureRequest,
    failure: str,
    task_ends: str,
) -> None:
    """A failed build writes to its pool (its back-off, or that the cloud's quota is
    full) after its task's row. The delete waits for it, then goes on: a build that
    failed for good stays failed, one sent back to ``requested`` is cancelled with its
    pool."""
    if failure == "over quota":
        request.getfixturevalue("no_room")
    image = NO_SUCH_IMAGE if failure == "fails for good" else None
    _, pool_id, task = _claimed_build(api, sim, engine, ctx, image=image)
    step = TaskStep(ctx, engine.drivers, task, OWNER)
    seam = Seam()
    failed: list[BaseException] = []
    answers: dict[str, httpx.Response] = {}
    with held_after_its_outcome(seam, ctx):
        while_held(
            seam,
            _building(step, failed),
            _deleting(api, f"pools/{pool_id}", answers),
            other_ends_first=False,
            other_waits_s=1,
        )
    assert failed == []
    assert answers["delete"].status_code == 204, answers["delete"].text
    assert not _exists(ctx, Pool, pool_id)
    row = _task(ctx, task.id)
    assert row is not None
    assert (row.state, row.pool_id) == (task_ends, None)
    # Neither outcome leaves the desktop that waited for the build.
    assert not _exists(ctx, Desktop, task.desktop_id)


@pytest.mark.parametrize("outcome", ["records its instance", "fails for good"])
def test_a_center_deleted_while_its_build_records_its_outcome_both_go_through(
    api: Api, sim: CloudSim, engine: Engine, ctx: BrokerContext, outcome: str
) -> None:
    """A pool deleted while its build was in the cloud's hands leaves the build to
    finish, and its center to no pool: an administrator may delete the center. A build
    recording the instance the cloud made wrote the desktop's row (its id) after its
    task's, where the delete takes the desktops first (it now writes the desktop's
    first); one that failed for good deletes its desktop. The delete waits for it, and
    then takes the center's desktops and tasks with it."""
    image = NO_SUCH_IMAGE if outcome == "fails for good" else None
    center_id, pool_id, task = _claimed_build(api, sim, engine, ctx, image=image)
    api.delete(f"pools/{pool_id}")
    step = TaskStep(ctx, engine.drivers, task, OWNER)
    seam = Seam()
    failed: list[BaseException] = []
    answers: dict[str, httpx.Response] = {}
    with held_after_its_outcome(seam, ctx):
        while_held(
            seam,
            _building(step, failed),
            _deleting(api, f"centers/{center_id}", answers),
            other_ends_first=False,
            other_waits_s=1,
        )
    assert failed == []
    assert answers["delete"].status_code == 204, answers["delete"].text
    assert not _exists(ctx, Center, center_id)
    assert _task(ctx, task.id) is None
    assert not _exists(ctx, Desktop, task.desktop_id)

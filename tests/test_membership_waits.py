"""A request's wait for its tenant's membership lock is bounded (``store/advisory.
BoundedWaits``, ``store/membership.REQUEST_WAITS``): a few at once per tenant and
process, each for seconds, then refused with a time to try again. Unbounded, a tenant
administrator's long configuration apply and that tenant's writes sent meanwhile took
every thread and pooled connection of a broker process, and every other tenant waited.

The lock itself is PostgreSQL's; the first two tests use the shared server whatever
DESKBROKER_TEST_DB says, on advisory keys of their own. SQLite's one writer orders every
unit of the process: there an edit waits for the apply, unbounded (the last test)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from deskbroker.errors import TooManyRequests, Unavailable
from deskbroker.services import catalog_crud
from deskbroker.store import membership
from deskbroker.store.advisory import BoundedWaits
from tests.conftest import PG_ADMIN
from tests.helpers import Api, bearer, tenant_admin_of
from tests.races import Seam, while_held
from tests.test_config_code import CONFIG, export


@pytest.fixture
def pg() -> Iterator[Engine]:
    engine = create_engine(PG_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        yield engine
    finally:
        engine.dispose()


def _held(engine: Engine, name: str, release: threading.Event) -> threading.Thread:
    """Another unit holding the lock named ``name`` until ``release`` is set."""
    taken = threading.Event()

    def hold() -> None:
        with Session(engine) as session, session.begin():
            membership.advisory.xact_lock(session, name)
            taken.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(30)
    return thread


def test_past_the_bound_a_wait_is_refused_at_once_and_a_long_one_gives_up(pg: Engine) -> None:
    name = f"test:{uuid.uuid4().hex}"
    waits = BoundedWaits(per_group=1, wait_s=1.0, what="a test's change")
    release = threading.Event()
    holder = _held(pg, name, release)
    outcome: list[BaseException] = []

    def wait_in_vain() -> None:
        with Session(pg) as session, session.begin():
            try:
                waits.xact_lock(session, name, "acme")
            except Unavailable as exc:
                outcome.append(exc)

    try:
        waiter = threading.Thread(target=wait_in_vain)
        started = time.monotonic()
        waiter.start()
        while waits.waiting("acme") < 1 and time.monotonic() - started < 10:
            time.sleep(0.01)
        assert waits.waiting("acme") == 1
        # The bound is per group: the second of the same tenant is refused at once...
        refused_at = time.monotonic()
        with Session(pg) as session, session.begin(), pytest.raises(TooManyRequests) as refused:
            waits.xact_lock(session, name, "acme")
        assert time.monotonic() - refused_at < 0.5
        assert refused.value.extra["retry_after"] == 1  # a burst's waits are short
        assert "1 more requests of this tenant already wait" in refused.value.detail
        # ...another tenant's free lock is taken at once.
        with Session(pg) as session, session.begin():
            waits.xact_lock(session, f"{name}:other", "globex")
        waiter.join(30)
        [gave_up] = outcome
        assert isinstance(gave_up, Unavailable)
        assert time.monotonic() - started >= 1.0
        assert gave_up.extra["retry_after"] == 1
        assert "nothing of it written" in gave_up.detail
        assert waits.waiting("acme") == 0
    finally:
        release.set()
        holder.join(30)


def test_a_wait_that_ends_in_time_takes_the_lock_and_leaves_no_timeout_behind(
    pg: Engine,
) -> None:
    name = f"test:{uuid.uuid4().hex}"
    waits = BoundedWaits(per_group=1, wait_s=10.0, what="a test's change")
    release = threading.Event()
    holder = _held(pg, name, release)
    threading.Timer(0.3, release.set).start()
    try:
        with Session(pg) as session, session.begin():
            before = session.scalar(text("SHOW lock_timeout"))
            waits.xact_lock(session, name, "acme")
            assert session.scalar(text("SHOW lock_timeout")) == before
            # Held by this unit now: another cannot take it.
            with Session(pg) as other, other.begin():
                taken = other.scalar(
                    text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _key(name)}
                )
            assert taken is False
    finally:
        release.set()
        holder.join(30)


def _key(name: str) -> int:
    return membership.advisory._key(name)


def test_an_administrators_writes_during_a_long_apply_are_bounded(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant's document held after its first change while the same tenant's
    administrator sends two pool edits: on PostgreSQL one waits (the bound is one here)
    and gives up after its seconds with 503, the other is refused at once with 429, each
    with Retry-After; the apply then goes through. On SQLite both wait for the apply and
    go through after it."""
    monkeypatch.setattr(
        membership,
        "REQUEST_WAITS",
        BoundedWaits(per_group=1, wait_s=2.0, what="another change of this tenant's pools"),
    )
    acme = tenant_admin_of(api, "acme", "acme-boss")
    pool = acme.post("pools", {"name": "acme-desks"})
    document = export(acme)
    document["power_plans"].append(
        {"name": "weekend", "rules": [{"event": "idle", "after_minutes": 60, "action": "suspend"}]}
    )
    seam = Seam(first_only=True)
    seam.after(monkeypatch, catalog_crud, "bump_config_version")
    answers: dict[str, httpx.Response] = {}
    took: dict[str, float] = {}

    def apply() -> None:
        answers["apply"] = api.client.post(
            f"{CONFIG}/apply", json=document, headers=bearer(acme.token)
        )

    def edit(key: str) -> None:
        started = time.monotonic()
        answers[key] = api.client.patch(
            f"/api/v1/admin/pools/{pool['id']}",
            json={"description": key},
            headers=bearer(acme.token),
        )
        took[key] = time.monotonic() - started

    def two_edits() -> None:
        first = threading.Thread(target=edit, args=("first",))
        first.start()
        if api.ctx.db.is_postgres:
            deadline = time.monotonic() + 10
            while membership.REQUEST_WAITS.waiting(pool["tenant_id"]) < 1:
                assert time.monotonic() < deadline, "the first edit never waited"
                time.sleep(0.01)
        else:
            time.sleep(0.5)
        edit("second")
        first.join(60)

    postgres = api.ctx.db.is_postgres
    while_held(
        seam, apply, two_edits, other_ends_first=postgres, other_waits_s=0 if postgres else 1
    )
    assert answers["apply"].status_code == 200, answers["apply"].text
    if postgres:
        assert answers["first"].status_code == 503, answers["first"].text
        assert answers["first"].headers["Retry-After"] == "2"
        assert took["first"] >= 2.0
        assert answers["second"].status_code == 429, answers["second"].text
        assert answers["second"].headers["Retry-After"] == "1"
        assert took["second"] < 1.5
        assert acme.get(f"pools/{pool['id']}")["description"] not in ("first", "second")
    else:
        assert answers["first"].status_code == 200, answers["first"].text
        assert answers["second"].status_code == 200, answers["second"].text
    assert "weekend" in {p["name"] for p in export(acme)["power_plans"]}

"""The pool guard across brokers: a scan's membership refresh on one broker that read the
guard just before a rule on another broker offered the pool to a global administrator
must not leave a tenant administrator's desktop in that pool once both have committed
(``membership.guard_changed``); and the after-commit work it rests on."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from sqlalchemy import select, update

from deskbroker.services.context import BrokerContext
from deskbroker.store import membership
from deskbroker.store.db import Database, after_commit
from deskbroker.store.tables import Desktop, Tenant, TenantGuard
from deskbroker.write_guard import write_depth
from tests.engine.test_pool_guard import GOLD, _members, _offer, _tenant_admin
from tests.helpers import Api


@pytest.fixture
def other_broker(ctx: BrokerContext) -> Iterator[BrokerContext]:
    """A second broker on the same database: its own engine and connections."""
    other = BrokerContext.from_settings(ctx.settings)
    yield other
    other.db.dispose()


class PausedAfterGuard:
    """Holds one thread's refresh just after it read the guard, until told to go on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.read = threading.Event()
        self.go_on = threading.Event()
        self.thread: threading.Thread | None = None
        real = membership.guard

        def guard(*args: Any) -> membership.Guard:
            fence = real(*args)
            if threading.current_thread() is self.thread:
                self.read.set()
                assert self.go_on.wait(30), "never told to go on"
            return fence

        monkeypatch.setattr(membership, "guard", guard)


def test_a_refresh_that_read_the_guard_before_a_rule_offered_the_pool_looks_again(
    api: Api, other_broker: BrokerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    tad = _tenant_admin(api)
    mine = tad.post(
        "centers",
        {
            "name": "mine",
            "kind": "static",
            "params": {"machines": [{"name": "plain-1", "address": "192.0.2.30"}]},
        },
    )
    assert mine["vouched_by_global_admin"] is False
    silver = tad.post("pools", {"name": "silver", "filters": GOLD})
    assert _members(api, silver["id"]) == set()
    with api.ctx.db.read() as session:
        desktop, tenant = session.execute(
            select(Desktop.id, Desktop.tenant_id).where(Desktop.name == "plain-1")
        ).one()
        before = session.scalar(select(TenantGuard.version).where(TenantGuard.tenant_id == tenant))

    paused = PausedAfterGuard(monkeypatch)

    def scan_on_the_other_broker() -> None:
        # What a scan of the tenant administrator's center writes: the machine now
        # named to match the pool's filters, then the tenant's membership refreshed.
        with other_broker.db.write() as session:
            session.execute(update(Desktop).where(Desktop.id == desktop).values(name="gold-x"))
            membership.refresh(session, tenant)

    scan = threading.Thread(target=scan_on_the_other_broker)
    paused.thread = scan
    scan.start()
    assert paused.read.wait(30)
    # The rule is written on this broker while the other's refresh, which read the guard
    # before it (no pool offered to a global administrator then), has not committed.
    offer = threading.Thread(target=_offer, args=(api, silver["id"], "silver"))
    offer.start()
    # The rule's write holds the tenant's membership first, as the refresh does (on
    # PostgreSQL; the one writer on SQLite): it waits for the refresh, then its own look
    # at the members sees what the refresh placed. (Before that lock it committed first
    # here, and the refresh's look after its commit, seeing the guard's version moved,
    # dropped the desktop; that look stays as a second line.)
    offer.join(1)
    assert offer.is_alive()
    paused.go_on.set()
    scan.join(30)
    offer.join(30)
    assert not scan.is_alive() and not offer.is_alive()

    assert _members(api, silver["id"]) == set()
    with api.ctx.db.read() as session:
        after = session.scalar(select(TenantGuard.version).where(TenantGuard.tenant_id == tenant))
    assert after is not None and after > (before or 0)
    # The pool no stronger account is offered still takes it by the same filters.
    other = tad.post("pools", {"name": "other", "filters": GOLD})
    assert _members(api, other["id"]) == {"gold-x"}


def test_work_left_for_after_a_commit(ctx: BrokerContext, caplog: pytest.LogCaptureFixture) -> None:
    db: Database = ctx.db
    ran: list[tuple[str, int]] = []

    def note(what: str) -> Any:
        return lambda _: ran.append((what, write_depth()))

    with db.write():
        after_commit(note("write"))
        assert ran == []
    with db.connect_write():
        after_commit(note("core"))
    with db.read():
        after_commit(note("read"))  # no write unit: nothing to look at again
    with pytest.raises(RuntimeError), db.write():
        after_commit(note("rolled back"))
        raise RuntimeError("refused")
    # Run once committed, outside any write unit (so it may open units of its own).
    assert ran == [("write", 0), ("core", 0)]

    def fails(_: Database) -> None:
        raise ValueError("broken")

    with caplog.at_level(logging.ERROR, "deskbroker.store.db"), db.write():
        after_commit(fails)
        after_commit(note("after a failure"))
    # The committed unit stands; the failure is logged and the rest still runs.
    assert ran[-1] == ("after a failure", 0)
    assert "work left for after a commit failed" in caplog.text


def test_a_guard_change_takes_no_lock_the_quota_checks_take(api: Api) -> None:
    """The version has a row of its own: the quota checks lock the tenant's row first
    (a build, a connect), and an administrator's pool write locks its pool first, so a
    version kept on ``tenants`` deadlocked the two on PostgreSQL (the write answered
    503). With the tenant's row held as a build holds it, a pool write still goes
    through at once."""
    pool = api.post("pools", {"name": "silver", "filters": GOLD})
    tenant = str(api.get("tenants?name=default")["items"][0]["id"])
    with ExitStack() as held:
        if api.ctx.db.is_postgres:
            # Another broker's build, between its quota check and its pool's status.
            session = held.enter_context(api.ctx.db.write())
            session.execute(
                select(Tenant.id).where(Tenant.id == tenant).with_for_update(key_share=True)
            )
        done: list[int] = []
        writer = threading.Thread(
            target=lambda: done.append(
                api.client.patch(
                    f"/api/v1/admin/pools/{pool['id']}", json={"name": "gold"}, headers=api.headers
                ).status_code
            )
        )
        writer.start()
        writer.join(15)
        assert done == [200], done
    with api.ctx.db.read() as session:
        assert session.scalar(select(TenantGuard.version).where(TenantGuard.tenant_id == tenant))

"""A scan writes only rows still as it read them. On PostgreSQL each statement sees what
had committed when it began, so an agent's report, or a claim, may commit between the
scan's read of a desktop and its write: the scan leaves such a row for the next scan
instead of writing back what it read (an agent marked lost flipped back to running), and
a desktop a user claimed meanwhile is kept, marked deleted, rather than deleted under
them. On SQLite the one writer serialises the two; the tests hold there too."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, update

from deskbroker.services.context import BrokerContext
from deskbroker.store import desktop_sync
from deskbroker.store.tables import Desktop
from tests.engine.test_scan_meets_builds import _look, _record
from tests.helpers import Api
from tests.races import Seam, while_held


def _with_scan_held(
    ctx: BrokerContext,
    monkeypatch: pytest.MonkeyPatch,
    record: Callable[[], Any],
    meanwhile: Callable[[], None],
) -> None:
    """Run ``record`` (a scan's database half) on a thread, held just after it read the
    center's desktops, while ``meanwhile`` commits on another."""
    seam = Seam()
    seam.after(monkeypatch, desktop_sync, "_being_built")
    # On PostgreSQL ``meanwhile`` commits while the scan is between its read and write.
    while_held(seam, record, meanwhile, other_ends_first=ctx.db.is_postgres)


def test_an_agent_marked_lost_while_a_scan_records_stays_lost(
    api: Api, ctx: BrokerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = api.seed_pool(1)
    with ctx.db.write() as session:
        # The scan will have something to write: an address that is not the machine's.
        session.execute(update(Desktop).values(agent_state="running", address="192.0.2.99"))
    listing = _look(ctx, ids["center"])

    def lost() -> None:
        # What the agent watch writes for an agent silent too long.
        with ctx.db.write() as session:
            session.execute(update(Desktop).values(agent_state="lost"))

    _with_scan_held(ctx, monkeypatch, lambda: _record(ctx, ids["center"], listing), lost)
    with ctx.db.read() as session:
        assert session.scalars(select(Desktop.agent_state)).all() == ["lost"]


def test_a_desktop_claimed_while_a_scan_removes_it_is_kept_for_its_user(
    api: Api, ctx: BrokerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = api.seed_pool(2, users=1)
    listing = _look(ctx, ids["center"])
    assert listing.changes is not None
    # A listing in which lab-001 is gone from the center.
    changes = dataclasses.replace(
        listing.changes, machines=[m for m in listing.changes.machines if m.name != "lab-001"]
    )
    listing = dataclasses.replace(listing, changes=changes)
    with ctx.db.write() as session:
        # lab-000 out of the claim: the user's sign-in takes lab-001.
        session.execute(
            update(Desktop).where(Desktop.name == "lab-000").values(availability="unavailable")
        )
    given: dict[str, Any] = {}

    def sign_in() -> None:
        given.update(api.login("user0"))

    _with_scan_held(ctx, monkeypatch, lambda: _record(ctx, ids["center"], listing), sign_in)
    [offer] = given["offers"]
    with ctx.db.read() as session:
        row = session.scalars(select(Desktop).where(Desktop.name == "lab-001")).first()
    if not ctx.db.is_postgres:
        # One writer: the scan removed it before the sign-in ran, which found none free.
        assert offer["status"] == "queued" and row is None
        return
    assert offer["status"] == "assigned" and offer["desktop"]["name"] == "lab-001"
    # Its machine is gone, so it is marked so, for its user and the administrators.
    assert row is not None and row.assigned_user_id is not None
    assert (row.power_state, row.availability) == ("deleted", "unavailable")

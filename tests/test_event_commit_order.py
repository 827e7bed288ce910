"""An event is written as its unit commits (``store/events.append``): its id is taken
then, so a unit open longer than the fan-out's settle time no longer leaves its events
behind a cursor that walked past their ids (the webhooks and the event stream never
carried them), and a unit or savepoint rolled back writes none."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from deskbroker.services.context import BrokerContext
from deskbroker.store import events, fanout
from deskbroker.store.tables import Event, utcnow


def _kinds(ctx: BrokerContext, after: int) -> list[tuple[int, str]]:
    with ctx.db.read() as session:
        rows = session.execute(
            select(Event.id, Event.kind).where(Event.id > after).order_by(Event.id)
        ).all()
    return [(int(i), k) for i, k in rows]


def _fan_out_long_after(ctx: BrokerContext) -> fanout.Batch:
    """A fan-out for which every gap in the ids has long settled."""
    with ctx.db.write() as session:
        return fanout.fan_out(session, utcnow() + timedelta(hours=1), settle_s=5.0)


def test_a_long_units_events_reach_the_fan_out_after_a_shorter_ones(ctx: BrokerContext) -> None:
    with ctx.db.write() as session:
        start = fanout.cursor(session)
    appended = threading.Event()
    go_on = threading.Event()

    def long_unit() -> None:
        with ctx.db.write() as session:
            events.append(session, "test.long", tenant_id=None)
            appended.set()
            assert go_on.wait(30)

    held = threading.Thread(target=long_unit)
    held.start()
    assert appended.wait(30)
    if ctx.db.is_postgres:  # SQLite's one writer: the short unit waits for the long one
        with ctx.db.write() as session:
            events.append(session, "test.short", tenant_id=None)
        # Nothing of the long unit is in the log yet, not even an id: no gap to pass.
        assert [k for _, k in _kinds(ctx, start)] == ["test.short"]
        assert _fan_out_long_after(ctx).walked == 1
    go_on.set()
    held.join(30)
    if not ctx.db.is_postgres:
        with ctx.db.write() as session:
            events.append(session, "test.short", tenant_id=None)
    found = _kinds(ctx, start)
    assert [k for _, k in found] == (
        ["test.short", "test.long"] if ctx.db.is_postgres else ["test.long", "test.short"]
    )
    _fan_out_long_after(ctx)
    with ctx.db.read() as session:
        assert fanout.horizon(session) == found[-1][0]


def test_a_rolled_back_unit_or_savepoint_writes_no_event(ctx: BrokerContext) -> None:
    with ctx.db.write() as session:
        start = fanout.cursor(session)
    with pytest.raises(RuntimeError), ctx.db.write() as session:
        events.append(session, "test.rolled-back", tenant_id=None)
        raise RuntimeError("the unit fails")
    with ctx.db.write() as session:
        events.append(session, "test.kept", tenant_id=None)
        try:
            with session.begin_nested():
                events.append(session, "test.in-savepoint", tenant_id=None)
                with session.begin_nested():
                    events.append(session, "test.in-inner", tenant_id=None)
                raise RuntimeError("the savepoint fails")
        except RuntimeError:
            pass
        with session.begin_nested():
            events.append(session, "test.released", tenant_id=None)
        events.append(session, "test.last", tenant_id=None)
    assert [k for _, k in _kinds(ctx, start)] == ["test.kept", "test.released", "test.last"]

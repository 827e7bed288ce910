"""A user reconnects just as their desktop's release timer fires: the reconnect cancels
the timer, and the timer's run, which read it before it waited for the desktop's lock,
reads it again under the lock and does nothing. Carried on with the timer as first read
(on PostgreSQL each statement sees its own moment), the run judged the facts (the user
is back), wrote a ``plan.cancelled`` event for a timer that no longer existed and
deleted it a second time (SQLAlchemy warned of a delete that matched no row). On SQLite
the one writer serialises the two: the timer that came first runs, and releases."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from deskbroker.engine import plans as engine_plans
from deskbroker.engine.drivers import DriverCache
from tests.desktop_agent import Agent, assigned_desktop, events_of, fire_due, with_plans
from tests.helpers import Api


def test_a_reconnect_as_the_release_timer_fires_keeps_the_desktop(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.seed_pool(1, users=1)
    with_plans(api, release=[{"event": "disconnect", "after_minutes": 30, "action": "release"}])
    desktop = assigned_desktop(api, "user0")
    agent = Agent.mint(api, desktop)
    start = datetime.now(UTC)
    agent.send("login", at=start)
    assert len(agent.send("disconnect", at=start)["timers_set"]) == 1

    read, go_on = threading.Event(), threading.Event()
    real = engine_plans.rows.lock_desktop

    def lock_desktop(*args: Any) -> Any:
        # The timer's run, after it read the timer and before it locks the desktop.
        if threading.current_thread() is firing:
            read.set()
            assert go_on.wait(30), "never told to go on"
        return real(*args)

    monkeypatch.setattr(engine_plans.rows, "lock_desktop", lock_desktop)
    fired: dict[str, Any] = {}
    firing = threading.Thread(
        target=lambda: fired.update(
            n=fire_due(api.ctx, DriverCache(api.ctx), start + timedelta(minutes=31))
        )
    )
    firing.start()
    assert read.wait(30)
    back: dict[str, Any] = {}

    def reconnect() -> None:
        answer = agent.client.post(
            "/api/v1/agent/events",
            json={"event": "reconnect", "user": "user0"},
            headers={"Authorization": f"Bearer {agent.token}"},
        )
        back.update(status=answer.status_code, body=answer.json())

    reconnecting = threading.Thread(target=reconnect)
    reconnecting.start()
    if api.ctx.db.is_postgres:
        reconnecting.join(30)  # it cancels the timer and commits while the run waits
        assert not reconnecting.is_alive()
    go_on.set()
    firing.join(30)
    reconnecting.join(30)
    assert not firing.is_alive() and not reconnecting.is_alive()

    holder = api.get(f"desktops/{desktop}")["assigned_user_id"]
    if api.ctx.db.is_postgres:
        assert back["status"] == 200 and back["body"]["timers_cancelled"] == 1, back
        assert holder is not None, "released from under the user who came back"
        # The run found the timer gone and wrote nothing of its own.
        assert events_of(api, desktop) == []
    else:
        # One writer: the timer ran first and released the desktop.
        assert holder is None

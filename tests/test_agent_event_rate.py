"""A desktop's agent reports at most DESKBROKER_AGENT_EVENTS_PER_MINUTE events a minute:
past it a 429 with Retry-After, before anything is written; other desktops unaffected."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from deskbroker.config import Settings
from deskbroker.errors import TooManyRequests
from deskbroker.services.agent_rate import AgentEventLimiter
from deskbroker.services.context import BrokerContext
from tests.desktop_agent import Agent, assigned_desktop, events_of
from tests.helpers import Api

LIMIT = 5
EVENTS = "/api/v1/agent/events"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"agent_events_per_minute": LIMIT})


class Clock:
    """A monotonic clock that moves only when told: the window passes at once."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(ctx: BrokerContext) -> Clock:
    clock = Clock()
    ctx.agent_events = AgentEventLimiter(clock=clock)
    return clock


def _post(agent: Agent, event: str, user: str) -> Any:
    return agent.client.post(
        EVENTS,
        json={"event": event, "user": user},
        headers={"Authorization": f"Bearer {agent.token}"},
    )


def _written(api: Api, desktop: str) -> tuple[int, int]:
    """The desktop's session rows and session events."""
    sessions = api.get(f"sessions?desktop_id={desktop}&limit=1000")["items"]
    return len(sessions), len(events_of(api, desktop, "session."))


def _flood_until_refused(agent: Agent) -> None:
    # A copied token's loop: logins and logouts of made-up users (rogue sessions).
    for n in range(LIMIT):
        event = "login" if n % 2 == 0 else "logout"
        assert _post(agent, event, f"mallory{n // 2}").status_code == 200


def test_the_event_past_the_limit_is_a_429_and_writes_nothing(
    api: Api, clock: Clock, ctx: BrokerContext
) -> None:
    api.seed_pool(2, users=2)
    flooded = assigned_desktop(api, "user0")
    other = assigned_desktop(api, "user1")
    agent, neighbour = Agent.mint(api, flooded), Agent.mint(api, other)

    _flood_until_refused(agent)
    before = _written(api, flooded)
    assert before[0] == 3  # three rogue sessions, two of them over
    clock.now += 10
    refused = _post(agent, "logout", "mallory2")
    assert refused.status_code == 429, refused.text
    # The first five were counted at the same instant: a slot frees 60 s after it.
    assert refused.headers["Retry-After"] == "50"
    problem = refused.json()
    assert problem["status"] == 429
    assert (
        f"this desktop's agent reported more than {LIMIT} events in a minute" in problem["detail"]
    )
    assert "send it again in 50 s" in problem["detail"]
    assert _written(api, flooded) == before
    assert api.get(f"sessions?desktop_id={flooded}&limit=1000")["items"][0]["state"] != (
        "logged_out"
    )

    # Another desktop's agent, and this desktop's heartbeats, are heard as ever.
    assert neighbour.send("login", "user1")["state"] == "logged_in"
    beat = api.client.post(
        "/api/v1/agent/heartbeat", json={}, headers={"Authorization": f"Bearer {agent.token}"}
    )
    assert beat.status_code == 200, beat.text

    # Still refused just before the slot frees; heard once the window has passed.
    clock.now += 49
    assert _post(agent, "logout", "mallory2").status_code == 429
    clock.now += 1
    assert agent.send("logout", "mallory2")["state"] == "logged_out"
    assert _written(api, flooded) == (before[0], before[1] + 1)


def test_a_replaced_token_cannot_use_up_the_agents_events(api: Api, clock: Clock) -> None:
    api.seed_pool(1, users=1)
    desktop = assigned_desktop(api, "user0")
    kept = Agent.mint(api, desktop)
    # The desktop changes hands, or an administrator mints a new token: the copy someone
    # kept is refused with 401, and its refusals are not counted against the desktop.
    agent = Agent.mint(api, desktop)
    for _ in range(3 * LIMIT):
        assert _post(kept, "login", "mallory").status_code == 401
    _flood_until_refused(agent)
    assert _post(agent, "login", "mallory9").status_code == 429


def test_the_limit_holds_across_threads_and_forgets_idle_desktops() -> None:
    clock = Clock()
    limiter = AgentEventLimiter(clock=clock)
    taken: list[float] = []
    refused: list[TooManyRequests] = []

    def report() -> None:
        try:
            taken.append(limiter.take("d1", LIMIT))
        except TooManyRequests as exc:
            refused.append(exc)

    threads = [threading.Thread(target=report) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(taken), len(refused)) == (LIMIT, 40 - LIMIT)
    assert refused[0].extra["retry_after"] == 60

    for n in range(100):
        limiter.take(f"idle{n}", LIMIT)
    assert limiter.desktops() == 101
    # A window later, the next event sweeps out every desktop silent since.
    clock.now += 61
    limiter.take("d2", LIMIT)
    assert limiter.desktops() == 1
    limiter.give_back("d2", clock.now)
    assert limiter.desktops() == 0

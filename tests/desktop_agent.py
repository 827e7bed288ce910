"""Test helpers for sessions and plans: a desktop agent over HTTP, plans, due timers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from fastapi.testclient import TestClient

from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.plans import execute_timer
from deskbroker.engine.turns import CenterTurns
from deskbroker.services.context import BrokerContext
from deskbroker.store import leases
from deskbroker.store.tables import Timer
from tests.helpers import Api

OWNER = "test-broker:1"


@dataclass
class Agent:
    """A desktop's agent: reports session events with its agent token."""

    client: TestClient
    token: str
    desktop_id: str

    @classmethod
    def mint(cls, api: Api, desktop_id: str) -> Agent:
        body = api.post(f"desktops/{desktop_id}/agent-token", {})
        assert body["desktop_id"] == desktop_id
        return cls(api.client, body["token"], desktop_id)

    def send(
        self, event: str, user: str = "user0", *, status: int = 200, **extra: Any
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"event": event, "user": user}
        for key, value in extra.items():
            payload[key] = value.isoformat() if isinstance(value, datetime) else value
        response = self.client.post(
            "/api/v1/agent/events",
            json=payload,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        assert response.status_code == status, response.text
        result: dict[str, Any] = response.json()
        return result


def with_plans(
    api: Api,
    *,
    power: list[dict[str, Any]] | None = None,
    release: list[dict[str, Any]] | None = None,
    assignment: str = "persistent",
) -> dict[str, str]:
    """Give the seeded policy's pool a power and/or a release plan."""
    entry: dict[str, Any] = {"pool_id": api.ids["pool"], "assignment": assignment}
    if power is not None:
        plan = api.post("power-plans", {"name": "power", "rules": power})
        entry["power_plan_id"] = api.ids["power_plan"] = plan["id"]
    if release is not None:
        plan = api.post("release-plans", {"name": "release", "rules": release})
        entry["release_plan_id"] = api.ids["release_plan"] = plan["id"]
    api.patch(f"policies/{api.ids['policy']}", {"entries": [entry]})
    return api.ids


def assigned_desktop(api: Api, username: str) -> str:
    """Log ``username`` in and return the desktop the login handed them."""
    offers = api.login(username)["offers"]
    assert offers and offers[0]["status"] == "assigned", offers
    return str(offers[0]["desktop"]["id"])


def fire_due(
    ctx: BrokerContext, drivers: DriverCache, now: datetime, turns: CenterTurns | None = None
) -> int:
    """What the engine runner does with due timers: claim by lease, then execute (taking
    a turn of ``turns`` first, when given, as the runner does)."""
    with ctx.db.write() as session:
        ids = leases.claim_due(
            session, Timer, Timer.due_at, owner=OWNER, now=now, ttl_s=60, limit=100
        )
    for timer_id in ids:
        execute_timer(ctx, drivers, timer_id, OWNER, now, turns=turns)
    return len(ids)


def events_of(api: Api, desktop_id: str, prefix: str = "plan.") -> list[dict[str, Any]]:
    items = api.get(f"events?desktop_id={desktop_id}&limit=1000")["items"]
    return [e for e in reversed(items) if str(e["kind"]).startswith(prefix)]


def timers_of(api: Api, desktop_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get(f"timers?desktop_id={desktop_id}")["items"]
    return items


def enrol_by_key(api: Api, key: str, **identity: Any) -> httpx.Response:
    """An agent's enrolment with an enrolment key (or a desktop's secret), as it sends
    it: the raw answer."""
    return api.client.post("/api/v1/agent/enrol", json={"secret": key, "identity": identity})


def poll_enrolment(api: Api, handle: str) -> httpx.Response:
    """A held agent's poll for its credential: the raw answer."""
    return api.client.post("/api/v1/agent/enrol/poll", json={"poll_handle": handle})

"""The event stream: server-sent events of the caller's tenant only, resumable with
Last-Event-ID, filtered by kind; and the monthly usage report checked against a known
sequence of sessions, per tenant, as JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from deskbroker.bootstrap import add_local_user
from deskbroker.config import Settings
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import SessionRow
from tests.helpers import ADMIN_PASSWORD, USER_PASSWORD, Api, post_login, wait_until


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"webhook_poll_s": 0.2, "webhook_settle_s": 1.0, "engine_tick_s": 0.1}
    )


@pytest.fixture
def engine(ctx: BrokerContext) -> Iterator[Engine]:
    running = Engine(ctx, workers=4)
    running.start()
    yield running
    running.stop(wait=False)


def _admin(api: Api, username: str, tenant: str) -> Api:
    add_local_user(api.ctx, username, ADMIN_PASSWORD, role="tenant_admin", tenant_name=tenant)
    api.ctx.cache.invalidate()
    answer = api.client.post(
        "/api/v1/auth/login",
        json={"username": username, "password": ADMIN_PASSWORD, "tenant": tenant},
    )
    assert answer.status_code == 200, answer.text
    return Api(api.client, api.ctx, answer.json()["token"])


def _stream(
    admin: Api, query: str = "", last: str | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """One pass of the stream (``max_s=0``: what there is now); its text and events."""
    headers = dict(admin.headers)
    if last is not None:
        headers["Last-Event-ID"] = last
    answer = admin.client.get(f"/api/v1/admin/event-stream?max_s=0{query}", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in answer.text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            event = json.loads(fields["data"])
            assert fields["id"] == event["id"] and fields["event"] == event["kind"]
            events.append(event)
    return answer.text, events


def _first_id(text: str) -> str:
    return next(line[4:] for line in text.splitlines() if line.startswith("id: "))


def test_the_stream_shows_only_the_callers_tenant_and_resumes(api: Api, engine: Engine) -> None:
    a = _admin(api, "boss-a", "default")
    b = _admin(api, "boss-b", "b")
    add_local_user(api.ctx, "alice", USER_PASSWORD)
    add_local_user(api.ctx, "bob", USER_PASSWORD, tenant_name="b")
    start_a = _first_id(_stream(a)[0])
    start_b = _first_id(_stream(b)[0])
    for _ in range(2):
        assert post_login(api, "alice", "wrong-password-1").status_code == 401
        assert post_login(api, "bob", "wrong-password-1", tenant="b").status_code == 401

    def seen(admin: Api, start: str, actor: str) -> list[dict[str, Any]]:
        # The admins' own logins may come first: the stream starts where the fan-out was.
        events = _stream(admin, last=start)[1]
        return events if [e["actor"] for e in events].count(actor) == 2 else []

    a_events = wait_until(lambda: seen(a, start_a, "alice"), "tenant A's events in its stream")
    b_events = wait_until(lambda: seen(b, start_b, "bob"), "tenant B's events in its stream")
    a_tenant = api.get("tenants?name=default")["items"][0]["id"]
    b_tenant = api.get("tenants?name=b")["items"][0]["id"]
    assert {e["tenant_id"] for e in a_events} == {a_tenant}
    assert {e["tenant_id"] for e in b_events} == {b_tenant}
    # The global admin signed in to tenant A too: its login is tenant A's, and may come
    # after the fan-out the stream started at, as the tenant admins' own logins may.
    assert {e["actor"] for e in a_events} <= {"alice", "boss-a", "admin"}
    assert {e["actor"] for e in b_events} <= {"bob", "boss-b"}
    assert all(e["kind"] in ("login", "login_failed") for e in a_events + b_events)
    text_a = _stream(a, last=start_a)[0]
    assert "bob" not in text_a and b_tenant not in text_a
    # Resuming after the first event gives the rest, in order.
    rest = _stream(a, last=a_events[0]["id"])[1]
    assert [e["id"] for e in rest] == [e["id"] for e in a_events[1:]]
    # Filtered by kind: no session happened.
    assert _stream(a, "&kinds=session", last=start_a)[1] == []
    # The global admin sees both.
    both = _stream(api, last=min(start_a, start_b, key=int))[1]
    assert {e["tenant_id"] for e in both} >= {a_tenant, b_tenant}
    for bad in ("&kinds=logins", "&max_s=-1"):
        answer = a.client.get(f"/api/v1/admin/event-stream?max_s=0{bad}", headers=a.headers)
        assert answer.status_code == 422, answer.text
    answer = a.client.get(
        "/api/v1/admin/event-stream?max_s=0", headers={**a.headers, "Last-Event-ID": "x"}
    )
    assert answer.status_code == 422 and "Last-Event-ID" in answer.text


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _sessions(ctx: BrokerContext, tenant_id: str, rows: list[tuple[str, str, str | None]]) -> None:
    """Sessions as the agents would have reported them, at chosen times."""
    with ctx.db.write() as session:
        for desktop_id, start, end in rows:
            session.add(
                SessionRow(
                    tenant_id=tenant_id,
                    desktop_id=desktop_id,
                    state="logged_out" if end else "logged_in",
                    started_at=_at(start),
                    ended_at=_at(end) if end else None,
                )
            )


def test_usage_report_matches_a_known_sequence_of_sessions(api: Api) -> None:
    b = _admin(api, "boss-b", "b")
    api.seed_pool(3)
    b.seed_pool(1, name="blab", address_base="127.0.2.")
    d1, d2, d3 = sorted(
        api.get("desktops?center_id=" + api.ids["center"])["items"], key=lambda d: d["name"]
    )
    (bd,) = b.get("desktops")["items"]
    a_tenant = d1["tenant_id"]
    _sessions(
        api.ctx,
        a_tenant,
        [
            (d1["id"], "2026-09-30T22:00", "2026-10-01T02:00"),  # 2 h in October
            (d1["id"], "2026-10-10T08:00", "2026-10-10T12:00"),  # 4 h
            (d1["id"], "2026-10-10T10:00", "2026-10-10T14:00"),  # 4 h, d1 busy 08-14
            (d2["id"], "2026-10-10T11:00", "2026-10-10T11:30"),  # 0.5 h: 3 at 11:00
            (d2["id"], "2026-10-12T10:00", "2026-10-12T11:00"),  # 1 h
            (d3["id"], "2026-10-12T11:00", "2026-10-12T12:00"),  # 1 h, meets, no overlap
            (d2["id"], "2026-10-31T23:00", "2026-11-01T01:00"),  # 1 h in October
            (d3["id"], "2026-10-20T09:00", None),  # open: 279 h to the month's end
            (d3["id"], "2026-08-01T09:00", "2026-08-02T09:00"),  # another month
        ],
    )
    _sessions(api.ctx, bd["tenant_id"], [(bd["id"], "2026-10-05T00:00", "2026-10-06T00:00")])
    mine = b.get("usage?month=2026-10")
    assert mine["month"] == "2026-10" and len(mine["items"]) == 1
    assert mine["items"][0]["session_hours"] == 24.0
    every = {row["tenant"]: row for row in api.get("usage?month=2026-10")["items"]}
    a = every["default"]
    assert a["sessions"] == 8
    assert a["session_hours"] == 2 + 4 + 4 + 0.5 + 1 + 1 + 1 + 279
    assert a["desktop_hours"] == (2 + 6) + (0.5 + 1 + 1) + (1 + 279)
    assert a["desktops"] == 3
    assert a["peak_concurrent_sessions"] == 3
    assert a["peak_at"].startswith("2026-10-10T11:00")
    assert every["b"]["session_hours"] == 24.0 and every["b"]["peak_concurrent_sessions"] == 1
    answer = api.client.get(
        f"/api/v1/admin/usage?month=2026-10&format=csv&tenant_id={a_tenant}", headers=api.headers
    )
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    (row,) = list(csv.DictReader(io.StringIO(answer.text)))
    assert float(row["session_hours"]) == 292.5 and row["peak_concurrent_sessions"] == "3"
    assert row["tenant_id"] == a_tenant
    # Another tenant's figures are not there for a tenant admin, as if it did not exist.
    b.get(f"usage?month=2026-10&tenant_id={a_tenant}", status=404)
    b.get("usage?month=2026-13", status=422)
    b.get("usage?month=october", status=422)
    august = {row["tenant"]: row for row in api.get("usage?month=2026-08")["items"]}
    assert august["default"]["session_hours"] == 24.0 and august["b"]["session_hours"] == 0.0

"""One fan-out serves every tenant, so one tenant's events must not hold back another's:
a run of the ``webhooks`` job fans out until it is caught up (not one batch), events no
webhook takes cost no delivery, and a webhook's queue stops at ``webhook_backlog``
pending deliveries, the events past it dropped and told of in its tenant's log."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from deskbroker.config import Settings
from deskbroker.engine import webhooks as engine_webhooks
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.webhooks import Dispatcher
from deskbroker.services.context import BrokerContext
from deskbroker.services.webhooks import DROPPED_KIND
from deskbroker.store import fanout
from deskbroker.store.tables import Event, WebhookDelivery, utcnow
from tests.helpers import Api, counting, tenant_admin_of, wait_until
from tests.webhook_receiver import receiving

SECRET = "receiver-secret-0123456789"
BACKLOG = 100
# A port nothing listens on: a post there fails at once and stays pending (retried later).
NOWHERE = "http://127.0.0.1:9/hook"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_backlog": BACKLOG, "webhook_retry_base_s": 600})


@pytest.fixture
def dispatcher(ctx: BrokerContext) -> Iterator[Dispatcher]:
    """The engine's webhooks job, run by the test; its first run puts the cursor at the
    newest event."""
    running = Dispatcher(ctx, "backlog-test")
    _run(running)
    yield running
    running.close(wait=True)  # its posts (to a closed port) end before the database goes


def _run(dispatcher: Dispatcher) -> str:
    return dispatcher.run(dispatcher.ctx, DriverCache(dispatcher.ctx), "", utcnow())


def _hook(api: Api, url: str, kinds: list[str]) -> dict[str, Any]:
    return api.post("webhooks", {"name": "h", "url": url, "kinds": kinds, "secret": SECRET})


def _flood(ctx: BrokerContext, tenant_id: str, kind: str, count: int) -> list[int]:
    """``count`` events of ``kind`` in the tenant's log (as its agents or sign-ins would
    write them), in one statement; their ids."""
    with ctx.db.write() as session:
        top = session.scalar(select(func.coalesce(func.max(Event.id), 0)))
        session.execute(
            insert(Event),
            [{"tenant_id": tenant_id, "kind": kind, "actor": "flood"} for _ in range(count)],
        )
        return list(
            session.scalars(
                select(Event.id)
                .where(Event.id > top, Event.tenant_id == tenant_id)
                .order_by(Event.id)
            )
        )


def _pending(ctx: BrokerContext, webhook_id: str) -> int:
    with ctx.db.read() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(WebhookDelivery.webhook_id == webhook_id, WebhookDelivery.state == "pending")
            )
            or 0
        )


def _notices(ctx: BrokerContext, webhook_id: str) -> list[dict[str, Any]]:
    with ctx.db.read() as session:
        rows = session.scalars(select(Event).where(Event.kind == DROPPED_KIND).order_by(Event.id))
        return [
            dict(r.detail, tenant_id=r.tenant_id)
            for r in rows
            if r.detail["webhook_id"] == webhook_id
        ]


def test_one_run_catches_up_with_another_tenants_flood(
    api: Api, ctx: BrokerContext, dispatcher: Dispatcher
) -> None:
    """Before, a run fanned out 500 events: a tenant writing more than 500 a second held
    every other tenant's webhooks and event streams further behind with every second."""
    acme = tenant_admin_of(api, "acme", "acme-boss")
    acme_hook = _hook(acme, NOWHERE, ["login"])
    with receiving(SECRET) as receiver:
        own_hook = _hook(api, receiver.url, ["login"])
        _run(dispatcher)
        before = _pending(ctx, acme_hook["id"])  # the administrator's own sign-in
        # Acme's agents and clients write 6,000 events its webhook does not take...
        flood = _flood(ctx, acme_hook["tenant_id"], "connect", 6000)
        # ...and then someone of the other tenant signs in.
        [login] = _flood(ctx, own_hook["tenant_id"], "login", 1)
        summary = _run(dispatcher)
        assert summary.startswith("6001 events in "), summary
        with ctx.db.read() as session:
            assert fanout.horizon(session) == login > flood[-1]
        wait_until(lambda: str(login) in receiver.ids(), "the other tenant's login delivered")
    # The flood queued nothing: no webhook chose those events.
    assert _pending(ctx, acme_hook["id"]) == before


def test_a_full_queue_drops_the_events_past_it_and_says_so(
    api: Api, ctx: BrokerContext, dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    acme = tenant_admin_of(api, "acme", "acme-boss")
    down = _hook(acme, NOWHERE, ["login"])
    acme_id = down["tenant_id"]
    _run(dispatcher)
    room = BACKLOG - _pending(ctx, down["id"])  # the administrator's own sign-in is queued
    logins = _flood(ctx, acme_id, "login", room + 50)
    _run(dispatcher)
    # The queue holds the first BACKLOG; the 50 after them are dropped and told of once.
    assert _pending(ctx, down["id"]) == BACKLOG
    with ctx.db.read() as session:
        queued = set(
            session.scalars(
                select(WebhookDelivery.event_id).where(WebhookDelivery.webhook_id == down["id"])
            )
        )
    assert set(logins[:room]) <= queued and not set(logins[room:]) & queued
    [notice] = _notices(ctx, down["id"])
    assert notice["tenant_id"] == acme_id
    assert notice["dropped"] == 50
    assert (notice["first_event_id"], notice["last_event_id"]) == (logins[room], logins[-1])
    assert "its queue holds 100 pending deliveries" in notice["reason"]
    # The tenant's administrator reads it in the tenant's log.
    listed = acme.get(f"events?kind={DROPPED_KIND}")["items"]
    assert [e["detail"]["dropped"] for e in listed] == [50]

    # Another tenant's webhook is not held back by acme's full queue.
    with receiving(SECRET) as receiver:
        own = _hook(api, receiver.url, ["login"])
        [login] = _flood(ctx, own["tenant_id"], "login", 1)
        _run(dispatcher)
        wait_until(lambda: str(login) in receiver.ids(), "the other tenant's login delivered")

    # More dropped within the minute: counted, not told of yet (one notice per minute)...
    more = _flood(ctx, acme_id, "login", 10)
    _run(dispatcher)
    assert len(_notices(ctx, down["id"])) == 1
    assert _pending(ctx, down["id"]) == BACKLOG
    # ...and told of, all since the last notice, once the minute is up.
    monkeypatch.setattr(engine_webhooks, "DROPPED_NOTICE_EVERY_S", 0.0)
    _run(dispatcher)
    later = _notices(ctx, down["id"])[-1]
    assert (later["dropped"], later["first_event_id"], later["last_event_id"]) == (
        10,
        more[0],
        more[-1],
    )
    # The notices themselves go to no webhook, not even one taking every kind.
    assert _pending(ctx, own["id"]) == 0


def test_a_queue_is_counted_once_a_second_and_never_passes_its_bound(
    api: Api, ctx: BrokerContext
) -> None:
    """Twenty full queues of one tenant counted at every batch slowed the fan-out every
    tenant shares (a count walks up to the bound's index entries): a count is kept for
    a second, taking what each batch queued off it, so the bound still holds."""
    acme = tenant_admin_of(api, "acme", "acme-boss")
    hook = _hook(acme, NOWHERE, ["login"])
    tenant_id = hook["tenant_id"]
    clock = [0.0]
    rooms = fanout.Rooms(clock=lambda: clock[0])
    with ctx.db.write() as session:  # the cursor starts at the newest event
        fanout.fan_out(session, utcnow(), 0.0, backlog=BACKLOG, rooms=rooms)
    counted: list[int] = []
    for _ in range(3):
        _flood(ctx, tenant_id, "login", 40)
        with counting() as statements, ctx.db.write() as session:
            fanout.fan_out(session, utcnow(), 0.0, backlog=BACKLOG, rooms=rooms)
        counted.append(sum("count(" in s.lower() and "webhook_deliveries" in s for s in statements))
    assert counted == [1, 0, 0]  # counted once, then taken off as the batches queued
    assert _pending(ctx, hook["id"]) == BACKLOG  # 120 logins: 100 queued, 20 dropped
    # A second on, the queue is counted again (its receiver may have drained it).
    clock[0] += 1.5
    with ctx.db.write() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.webhook_id == hook["id"])
            .values(state="delivered")
        )
    _flood(ctx, tenant_id, "login", 5)
    with ctx.db.write() as session:
        made = fanout.fan_out(session, utcnow(), 0.0, backlog=BACKLOG, rooms=rooms).made
    assert made == 5

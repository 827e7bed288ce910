"""Events out, the fan-out: the event log walked in id order behind one cursor, each
event a delivery (an outbox row) for every webhook of its tenant that chose its kind.

Event ids come from one sequence, so the fan-out walks them in order behind a cursor. On
PostgreSQL a transaction may commit an event with a lower id after one with a higher id
is visible: the fan-out stops at a gap in the ids until the event after it is
``settle_s`` old (a gap that old is a rolled-back insert), so no event is skipped for
being committed late. The cursor is also the event stream's horizon, so the stream and
the webhooks see the same events in the same order.

One cursor serves every tenant, so the fan-out must keep ahead of every tenant's writes
together: a batch reads only the four columns that choose the receivers, and loads the
rest of an event only when some webhook takes it, so a tenant flooding the log with
events no webhook takes costs an index walk and nothing more. The engine runs batches
one after another until it is caught up (``engine/webhooks.py``). And a webhook's queue
is bounded (``backlog``): a receiver that is down, or slower than its tenant's events,
stops getting new deliveries at that many pending and the rest are dropped and counted
(``Batch.dropped``), so one tenant cannot grow the outbox without end, nor the work of
every claim that steps over it.

Before a batch reads the enabled webhooks it lets the caller switch off those whose
setter may no longer read events (``vet``; the decision is the services' own, this
module only reads the setters and switches a webhook off).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from deskbroker.domain import webhooks as rules
from deskbroker.domain.timestamps import aware
from deskbroker.domain.webhooks import DeliveryState
from deskbroker.store.tables import Event, EventCursor, Webhook, WebhookDelivery, new_id

FANOUT = "webhooks"
# Events read by one batch (one transaction). Big enough that a caught-up fan-out reads
# a flood in few round trips, small enough that a batch's transaction stays short.
BATCH = 2000
# Switches off, in the fan-out's transaction, the enabled webhooks that must not get
# events any more; returns their ids.
Vet = Callable[[Session], Collection[str]]


@dataclass
class Dropped:
    """Events a webhook did not get because its queue was full: how many, and the first
    and last of their ids."""

    tenant_id: str
    count: int
    first_event_id: int
    last_event_id: int

    def add(self, other: Dropped) -> None:
        self.count += other.count
        self.first_event_id = min(self.first_event_id, other.first_event_id)
        self.last_event_id = max(self.last_event_id, other.last_event_id)


@dataclass
class Batch:
    """What one fan-out batch did: deliveries made, events walked past, whether it
    reached the newest event it may walk to, and what it dropped, by webhook."""

    made: int = 0
    walked: int = 0
    caught_up: bool = True
    dropped: dict[str, Dropped] = field(default_factory=dict)


def payload_of(event: Any) -> dict[str, Any]:
    """An event as a webhook and the event stream send it. ``id`` is the event's id:
    the same on every attempt, so a receiver deduplicates with it."""
    return {
        "id": str(event.id),
        "kind": event.kind,
        "category": str(rules.category(event.kind) or "test"),
        "at": aware(event.at).isoformat(),
        "tenant_id": event.tenant_id,
        "actor": event.actor,
        "user_id": event.user_id,
        "desktop_id": event.desktop_id,
        "pool_id": event.pool_id,
        "detail": event.detail or {},
    }


def cursor(session: Session) -> int:
    """The id up to which the event log has been fanned out (the event stream's horizon);
    made at the newest event the first time, so history is not sent to new webhooks."""
    found = session.execute(select(EventCursor.last_id).where(EventCursor.name == FANOUT)).first()
    if found is not None:
        return int(found[0])
    newest = session.execute(select(func.coalesce(func.max(Event.id), 0))).scalar_one()
    session.execute(insert(EventCursor).values(name=FANOUT, last_id=int(newest)))
    return int(newest)


def horizon(session: Session) -> int:
    """The cursor as a read sees it (0 before the first fan-out)."""
    found = session.execute(select(EventCursor.last_id).where(EventCursor.name == FANOUT)).first()
    return int(found[0]) if found is not None else 0


def stream_origin(session: Session) -> int:
    """Where a new stream starts: the cursor, or before the first fan-out the newest
    event (where the cursor will start), so a new stream never replays history."""
    found = session.execute(select(EventCursor.last_id).where(EventCursor.name == FANOUT)).first()
    if found is not None:
        return int(found[0])
    return int(session.execute(select(func.coalesce(func.max(Event.id), 0))).scalar_one())


def _hooks_by_tenant(
    session: Session, vet: Vet | None
) -> dict[str, list[tuple[str, frozenset[str]]]]:
    """The enabled webhooks by tenant, each with the categories it chose; those ``vet``
    switches off left out."""
    hooks = session.execute(
        select(Webhook.id, Webhook.tenant_id, Webhook.kinds, Webhook.set_by_user_id).where(
            Webhook.enabled.is_(True)
        )
    ).all()
    # Webhooks with no setter cost nothing more than the read above.
    switched_off: Collection[str] = ()
    if vet is not None and any(setter is not None for *_, setter in hooks):
        switched_off = vet(session)
    by_tenant: dict[str, list[tuple[str, frozenset[str]]]] = {}
    for hook_id, tenant_id, kinds, _ in hooks:
        if hook_id not in switched_off:
            by_tenant.setdefault(tenant_id, []).append((hook_id, frozenset(kinds or [])))
    return by_tenant


def _receivers(kind: str, detail: Any, hooks: list[tuple[str, frozenset[str]]]) -> list[str]:
    if kind == rules.TEST_KIND:
        wanted = (detail or {}).get("webhook_id")
        return [hook_id for hook_id, _ in hooks if hook_id == wanted]
    category = rules.category(kind)
    if category is None:
        return []
    return [hook_id for hook_id, kinds in hooks if category.value in kinds]


@dataclass
class Rooms:
    """What each webhook's queue took, as last counted, kept by the node that fans out
    for ``ttl_s``: a count walks up to ``backlog`` index entries, and twenty full queues
    of one tenant, counted at every batch, would slow the one fan-out every tenant
    shares. What is kept is a lower bound until counted again (only the fan-out adds
    pending deliveries; a finished one only makes room), so no queue goes past its bound
    for it; a queue that drains is seen to, within ``ttl_s``."""

    ttl_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    known: dict[str, tuple[int, float]] = field(default_factory=dict)

    def room(self, session: Session, hook_ids: Collection[str], backlog: int) -> dict[str, int]:
        """How many more deliveries each webhook's queue takes before it holds
        ``backlog`` pending (each count stops at the bound: a long queue is not counted
        to its end)."""
        now = self.clock()
        self.known = {h: k for h, k in self.known.items() if now - k[1] < self.ttl_s}
        room: dict[str, int] = {}
        for hook_id in hook_ids:
            if hook_id in self.known:
                room[hook_id] = self.known[hook_id][0]
                continue
            pending = (
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.webhook_id == hook_id,
                    WebhookDelivery.state == DeliveryState.PENDING.value,
                )
                .limit(backlog)
                .subquery()
            )
            count = int(session.execute(select(func.count()).select_from(pending)).scalar_one())
            room[hook_id] = max(0, backlog - count)
            self.known[hook_id] = (room[hook_id], now)
        return room

    def used(self, hook_id: str, left: int) -> None:
        """``hook_id``'s queue takes ``left`` more now (counted when it was)."""
        if hook_id in self.known:
            self.known[hook_id] = (left, self.known[hook_id][1])


def fan_out(
    session: Session,
    now: datetime,
    settle_s: float,
    *,
    batch: int = BATCH,
    backlog: int | None = None,
    rooms: Rooms | None = None,
    vet: Vet | None = None,
) -> Batch:
    """One batch: outbox rows for up to ``batch`` events after the cursor, for the
    webhooks that chose them, at most ``backlog`` pending per webhook (None: no bound;
    ``rooms`` keeps the counts between batches); advances the cursor in the same
    transaction.

    ``vet`` runs first when there are events to fan out and an enabled webhook names its
    setter; the webhooks it switches off get none of these events."""
    start = cursor(session)
    heads = session.execute(
        select(Event.id, Event.tenant_id, Event.kind, Event.at)
        .where(Event.id > start)
        .order_by(Event.id)
        .limit(batch)
    ).all()
    if not heads:
        return Batch()
    by_tenant = _hooks_by_tenant(session, vet)
    settled = now - timedelta(seconds=settle_s)
    last = start
    # Each event some webhook may take, with the webhooks of its tenant.
    taken: list[tuple[int, str, list[tuple[str, frozenset[str]]]]] = []
    caught_up = len(heads) < batch
    walked = 0
    for event_id, tenant_id, kind, at in heads:
        if event_id != last + 1 and aware(at) > settled:
            caught_up = True  # a gap that may still be a transaction about to commit: wait
            break
        last = event_id
        walked += 1
        if tenant_id is None:
            continue  # the cluster's own events go to no webhook
        hooks = by_tenant.get(tenant_id)
        if hooks and (kind == rules.TEST_KIND or _receivers(kind, None, hooks)):
            taken.append((event_id, tenant_id, hooks))
    if last == start:
        return Batch(caught_up=True)
    result = Batch(walked=walked, caught_up=caught_up)
    made = _deliveries(session, now, taken, backlog, rooms or Rooms(), result)
    # Compare-and-set: a second broker fanning out the same events (a lease taken over)
    # moves no cursor, and its transaction is rolled back by the caller.
    moved = session.execute(
        update(EventCursor)
        .where(EventCursor.name == FANOUT, EventCursor.last_id == start)
        .values(last_id=last, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if moved != 1:
        raise RuntimeError("the event cursor moved under this fan-out")
    if made:
        session.execute(insert(WebhookDelivery), [{"id": new_id(), **row} for row in made])
    result.made = len(made)
    return result


def _deliveries(
    session: Session,
    now: datetime,
    taken: list[tuple[int, str, list[tuple[str, frozenset[str]]]]],
    backlog: int | None,
    rooms: Rooms,
    result: Batch,
) -> list[dict[str, Any]]:
    """The delivery rows for the events some webhook takes, each loaded whole; those past
    a webhook's room counted in ``result.dropped`` instead."""
    if not taken:
        return []
    hooks_of = {event_id: (tenant_id, hooks) for event_id, tenant_id, hooks in taken}
    events = session.execute(
        select(Event).where(Event.id.in_(list(hooks_of))).order_by(Event.id)
    ).scalars()
    wanted = [
        (event, hooks_of[event.id][0], _receivers(event.kind, event.detail, hooks_of[event.id][1]))
        for event in events
    ]
    room: dict[str, int] | None = None
    if backlog is not None:
        room = rooms.room(session, {hook for *_, hooks in wanted for hook in hooks}, backlog)
    made: list[dict[str, Any]] = []
    for event, tenant_id, hooks in wanted:
        payload: dict[str, Any] | None = None
        for hook_id in hooks:
            if room is not None:
                if room[hook_id] <= 0:
                    one = Dropped(tenant_id, 1, event.id, event.id)
                    if hook_id in result.dropped:
                        result.dropped[hook_id].add(one)
                    else:
                        result.dropped[hook_id] = one
                    continue
                room[hook_id] -= 1
            payload = payload or payload_of(event)
            made.append(
                {
                    "tenant_id": tenant_id,
                    "webhook_id": hook_id,
                    "event_id": event.id,
                    "kind": event.kind,
                    "payload": payload,
                    "state": DeliveryState.PENDING.value,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "last_error": "",
                    "created_at": now,
                    "updated_at": now,
                }
            )
    for hook_id, left in (room or {}).items():
        rooms.used(hook_id, left)
    return made

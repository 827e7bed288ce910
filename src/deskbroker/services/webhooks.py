"""Events out, the use cases: webhooks as a catalog resource (URL through the outbound
policy, secret sealed), a test event, a webhook's deliveries and their retry, the event
stream's reads and the monthly usage report.

Nothing here posts anything: a request only writes rows (a webhook, a test event in the
event log); the engine's dispatcher (``engine/webhooks.py``) delivers, with no
transaction open. Whoever creates or changes a webhook is recorded as its setter, and
the dispatcher's fan-out switches it off (``switch_off_unvouched``) once they may no
longer read events. The setter's webhook is theirs: an account weaker than them may not
change, delete, test or retry it (``webhook_standing``). A tenant's webhooks and test
events are bounded (``webhook_limits``): each multiplies its events in the shared fan-out.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from deskbroker.domain import csv_cells
from deskbroker.domain import webhooks as rules
from deskbroker.domain.permissions import BuiltinRole
from deskbroker.domain.webhooks import Usage
from deskbroker.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from deskbroker.security import TokenClaims
from deskbroker.services import (
    access,
    standing,
    webhook_limits,
    webhook_standing,
    write_context,
)
from deskbroker.services.catalog_crud import Resource, scope
from deskbroker.services.context import BrokerContext
from deskbroker.store import events, fanout
from deskbroker.store import webhooks as store
from deskbroker.store.db import Unit
from deskbroker.store.repository import Repository
from deskbroker.store.tables import Webhook, WebhookDelivery, utcnow


def check_url(ctx: BrokerContext, url: str) -> str:
    """A webhook URL: http(s), a host, no credentials in it, and a host the outbound
    policy permits (a tenant admin must not aim the broker at its own loopback or the
    cloud's metadata service; names are checked again on every connection)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - a bad port raises here, not at delivery
    except ValueError as exc:
        raise InvalidInput(f"url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidInput("url must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise InvalidInput("url must not carry a user or password; the signature authenticates")
    ctx.settings.outbound_policy.check_host(host, "webhook url")
    return url


# A webhook hands its receiver the event log (sign-ins, failed sign-ins with the names
# typed and the client addresses, sessions), and its deliveries hold those events: the
# webhook permission alone must not be a way round the event log's own.
EVENTS_READ = "events:read"


def check_events_read(ctx: BrokerContext, who: TokenClaims, what: str) -> None:
    """Refuse ``what`` to a principal whose role (or API token) may not read events."""
    try:
        access.authorize(ctx, who, EVENTS_READ)
    except Forbidden as exc:
        raise Forbidden(
            f"{what} needs {EVENTS_READ} as well: a webhook delivers the event log "
            f"(sign-ins, failed sign-ins, sessions). {exc.detail}"
        ) from None


def _prepare(
    session: Unit, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
) -> dict[str, Any]:
    # Any change counts, enabling one included: it decides where events go.
    what = "creating a webhook" if existing is None else "changing a webhook"
    actor = write_context.actor_of(session).actor
    check_events_read(ctx, actor, what)
    if existing is not None:
        # Before the setter is replaced below: a stronger setter's webhook is not the
        # actor's to change, nor (by changing it) to take over.
        webhook_standing.check_setter(session, existing, "change")
    else:
        # Counted in the insert's unit (the tenant it goes to, a global admin's pick
        # included): each webhook multiplies the tenant's events in the shared fan-out.
        webhook_limits.check_room(session, ctx, tenant)
    # Whoever last aims it vouches for it: it delivers only while they may read events.
    data["set_by_user_id"] = actor.user_id
    if existing is not None and existing.enabled and data.get("enabled") is False:
        # What it had queued is not posted once an administrator switches it off.
        store.fail_pending(session, existing.id, utcnow(), "the webhook was switched off")
    if "url" in data:
        data["url"] = check_url(ctx, data["url"])
    if "kinds" in data:
        try:
            data["kinds"] = rules.chosen(data["kinds"] or [])
        except ValueError as exc:
            raise InvalidInput(f"kinds: {exc}") from None
    if "secret" in data:
        secret = data.pop("secret")
        if secret is None:
            raise InvalidInput("secret cannot be null; give a new secret to rotate it")
        data["secret_sealed"] = ctx.secrets.seal(secret)
    elif existing is not None and "url" in data and data["url"] != existing.url:
        # A secret given for one receiver is not handed to another one without the
        # administrator saying so (as with a center's secrets).
        raise InvalidInput("a new url needs a new secret: give secret with it")
    return data


# The event a webhook switched off for its setter leaves in its tenant's log. Like the
# admin.* kinds it belongs to no category: no webhook and no event stream gets it.
DISABLED_KIND = "webhook.disabled"


def _unvouched(ctx: BrokerContext, session: Unit, setter: store.Setter) -> str | None:
    """Why ``setter`` no longer vouches for a webhook, in words; None while they may
    read events."""
    if setter.username is None or setter.tenant_id is None or setter.role is None:
        return f"its setter (user {setter.user_id}) no longer exists"
    if setter.disabled:
        return f"its setter {setter.username} is disabled"
    roles = {setter.role}
    if setter.role == BuiltinRole.USER.value and setter.identity_source_id is not None:
        # A directory administrator's role comes from an assignment rule at each
        # sign-in, over a stored role of user: what the rules could give them counts.
        roles |= standing.rule_roles(
            session, setter.identity_source_id, setter.username, setter.groups, setter.attributes
        )
    resource, _, action = EVENTS_READ.partition(":")
    # A role this broker cannot read (gone) counts as no permission.
    readers = [
        role
        for role in roles
        if (grants := access.role_permissions(ctx, setter.tenant_id, role)) is not None
        and grants.allows(resource, action)
    ]
    if not readers:
        return (
            f"its setter {setter.username} may no longer read events "
            f"(role {setter.role} does not allow {EVENTS_READ})"
        )
    # Only a global administrator reads another tenant's events (one who aimed this
    # tenant's webhook and was made a tenant administrator of their own reads no more).
    if setter.tenant_id != setter.webhook_tenant_id and (
        BuiltinRole.GLOBAL_ADMIN.value not in readers
    ):
        return (
            f"its setter {setter.username} may no longer read this tenant's events "
            "(no longer a global administrator)"
        )
    return None


def switch_off_unvouched(ctx: BrokerContext, session: Unit) -> set[str]:
    """In the fan-out's unit: switch off every enabled webhook whose setter is gone,
    disabled, or whose role no longer allows ``events:read``, each with a
    ``webhook.disabled`` event in its tenant's log saying why; their ids. A webhook that
    names no setter (made before one was recorded) is left as it is."""
    now = utcnow()
    # One verdict per setter and tenant, however many webhooks they set up there.
    verdicts: dict[tuple[str, str], str | None] = {}
    off: set[str] = set()
    for setter in store.setters(session):
        key = (setter.user_id, setter.webhook_tenant_id)
        if key not in verdicts:
            verdicts[key] = _unvouched(ctx, session, setter)
        why = verdicts[key]
        if why is not None and switch_off(session, setter, why, now):
            off.add(setter.webhook_id)
    return off


def switch_off(session: Unit, setter: store.Setter, why: str, now: datetime) -> bool:
    """Switch off ``setter``'s webhook for ``why`` (words naming the setter), if it is
    still enabled and still theirs: its queued deliveries failed and a
    ``webhook.disabled`` event in its tenant's log; whether it was switched off."""
    if not store.switch_off(session, setter.webhook_id, setter.user_id, now):
        return False
    store.fail_pending(session, setter.webhook_id, now, f"the webhook was switched off: {why}")
    events.append(
        session,
        DISABLED_KIND,
        tenant_id=setter.webhook_tenant_id,
        actor="engine",
        user_id=setter.user_id,
        detail={
            "webhook_id": setter.webhook_id,
            "name": setter.webhook_name,
            "set_by_user_id": setter.user_id,
            "reason": why,
        },
    )
    return True


# The event a webhook's full queue leaves in its tenant's log: the events it did not get.
# Like webhook.disabled it belongs to no category: no webhook and no stream gets it.
DROPPED_KIND = "webhook.events_dropped"


def note_dropped(session: Unit, webhook_id: str, dropped: fanout.Dropped, backlog: int) -> None:
    """A ``webhook.events_dropped`` event in the webhook's tenant's log: how many events
    it did not get, their first and last ids, and the bound its queue was at."""
    events.append(
        session,
        DROPPED_KIND,
        tenant_id=dropped.tenant_id,
        actor="engine",
        detail={
            "webhook_id": webhook_id,
            "dropped": dropped.count,
            "first_event_id": dropped.first_event_id,
            "last_event_id": dropped.last_event_id,
            "reason": f"its queue holds {backlog} pending deliveries "
            "(DESKBROKER_WEBHOOK_BACKLOG): its receiver is down or slower than the events",
        },
    )


def _read(session: Unit, hook: Any) -> dict[str, Any]:
    # Never the sealed secret: only that there is one.
    out = {c.key: getattr(hook, c.key) for c in Webhook.__table__.columns}
    out.pop("secret_sealed")
    out["has_secret"] = bool(hook.secret_sealed)
    return out


def _before_delete(session: Unit, hook: Any) -> None:
    # Deleting a stronger setter's webhook blinds them as surely as switching it off.
    webhook_standing.check_setter(session, hook, "delete")


WEBHOOKS: Resource[Webhook] = Resource(
    model=Webhook,
    label="webhook",
    affects_config=False,
    prepare=_prepare,
    before_delete=_before_delete,
    to_read=_read,
)


def _hook(session: Unit, who: TokenClaims, webhook_id: str) -> Webhook:
    found: Webhook = Repository(Webhook, "webhook").get(session, webhook_id, scope(who))
    return found


def send_test(ctx: BrokerContext, who: TokenClaims, webhook_id: str) -> dict[str, Any]:
    """A ``webhook.test`` event in the log, for this webhook only: delivered like any
    other (signed, retried), so it proves the whole path. At most one per webhook per
    ``webhook_limits.TEST_INTERVAL_S`` in this process (429 with Retry-After)."""
    # The test goes where the webhook's events go: who may not choose that may not
    # prove it either.
    check_events_read(ctx, who, "sending a webhook's test event")
    with ctx.db.write() as session:
        hook = _hook(session, who, webhook_id)
        # Test events go to the setter's receiver ahead of the events queued after them:
        # a flood of them would delay what a stronger setter watches for.
        write_context.attach_actor(session, ctx, who)
        webhook_standing.check_setter(session, hook, "send a test event to")
        # Only once the caller may test it: a refused caller spends no one's turn.
        webhook_limits.TEST_PACE.take(hook.id, hook.name)
        events.append(
            session,
            rules.TEST_KIND,
            tenant_id=hook.tenant_id,
            actor=who.username,
            user_id=who.user_id,
            detail={"webhook_id": hook.id, "name": hook.name},
        )
    return {"webhook_id": webhook_id, "message": "a test event is queued for delivery"}


def deliveries(
    ctx: BrokerContext,
    who: TokenClaims,
    webhook_id: str,
    *,
    state: str | None,
    limit: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    """A webhook's recent deliveries, newest first: the events themselves."""
    check_events_read(ctx, who, "reading a webhook's deliveries")
    with ctx.db.read() as session:
        _hook(session, who, webhook_id)
        rows, total = store.deliveries(session, webhook_id, state=state, limit=limit, offset=offset)
        columns = [c.key for c in WebhookDelivery.__table__.columns if c.key != "lease_owner"]
        return [{c: getattr(r, c) for c in columns} for r in rows], total


def retry_failed(ctx: BrokerContext, who: TokenClaims, webhook_id: str) -> dict[str, Any]:
    """A webhook's failed deliveries tried again (its receiver is back): they hold the
    events themselves, so this needs ``events:read`` as reading them does."""
    check_events_read(ctx, who, "retrying a webhook's deliveries")
    with ctx.db.write() as session:
        hook = _hook(session, who, webhook_id)
        # Requeued from now, old events stand in front of newer ones at the setter's
        # receiver: a stronger setter's queue is not the actor's to reorder.
        write_context.attach_actor(session, ctx, who)
        webhook_standing.check_setter(session, hook, "retry the deliveries of")
        if not hook.enabled:
            raise Conflict(f"webhook {hook.name} is switched off; enable it first, then retry")
        count = store.retry(session, webhook_id, utcnow())
    return {"webhook_id": webhook_id, "requeued": count}


# --- the event stream ----------------------------------------------------------------
def check_kinds(kinds: list[str]) -> list[str]:
    """The event stream's ``kinds`` filter (none: every kind)."""
    if not kinds:
        return []
    try:
        return rules.chosen(kinds)
    except ValueError as exc:
        raise InvalidInput(f"kinds: {exc}") from None


def stream_start(ctx: BrokerContext, last_event_id: str | None) -> int:
    """Where a stream starts: after ``Last-Event-ID`` when the client resumes, else at
    the newest fanned-out event (a new stream shows what happens from now on)."""
    if last_event_id:
        try:
            start = int(last_event_id)
        except ValueError:
            raise InvalidInput("Last-Event-ID must be an event id from this stream") from None
        if start < 0:
            raise InvalidInput("Last-Event-ID must be an event id from this stream")
        return start
    with ctx.db.read() as session:
        return fanout.stream_origin(session)


def stream_still_allowed(ctx: BrokerContext, who: TokenClaims) -> bool:
    """Whether an open event stream's caller may still read events: their token not
    revoked (a person's user row, an API token's row: role, scopes, disabled) and their
    role still allowing ``events:read``. A stream lasts up to an hour; a demotion or a
    revocation must end it, as it refuses the caller's next request."""
    try:
        current = access.resolve_api_token(ctx, who) if who.is_api_token else who
        if not who.is_api_token:
            access.current_holder(ctx, who)
        access.authorize(ctx, current, EVENTS_READ)
    except (Unauthorized, Forbidden):
        return False
    return True


def stream_batch(
    ctx: BrokerContext, who: TokenClaims, after: int, kinds: list[str]
) -> tuple[list[dict[str, Any]], int]:
    """The next events of the caller's tenant (every tenant's for a global admin) whose
    category is among ``kinds`` (every categorised kind when empty), and the id to
    resume after. One indexed range over the event log."""
    wanted = set(kinds)
    with ctx.db.read() as session:
        rows, resume = store.stream(session, scope(who), after)
        out = [
            fanout.payload_of(r)
            for r in rows
            if (category := rules.category(r.kind)) is not None
            and (not wanted or category.value in wanted)
        ]
    return out, resume


# --- usage ---------------------------------------------------------------------------
USAGE_FIELDS = (
    "tenant_id",
    "tenant",
    "month",
    "sessions",
    "session_hours",
    "desktop_hours",
    "desktops",
    "peak_concurrent_sessions",
    "peak_at",
)


def this_month() -> str:
    """The current month (UTC) as ``YYYY-MM``."""
    return utcnow().strftime("%Y-%m")


def usage(
    ctx: BrokerContext, who: TokenClaims, month: str, tenant_id: str | None
) -> list[dict[str, Any]]:
    """The month's figures per tenant: the caller's own, or for a global admin every
    tenant's (or the one named)."""
    try:
        start, after = rules.month_bounds(month)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    mine = scope(who)
    now = utcnow()
    rows: list[dict[str, Any]] = []
    with ctx.db.read() as session:
        for t_id, t_name in store.tenants(session):
            if mine is not None and t_id != mine:
                continue
            if tenant_id is not None and t_id != tenant_id:
                continue
            figures: Usage = rules.usage(month, store.sessions_in(session, t_id, start, after), now)
            row = {"tenant_id": t_id, "tenant": t_name, **asdict(figures)}
            row["peak_at"] = figures.peak_at.isoformat() if figures.peak_at else None
            rows.append(row)
    if tenant_id is not None and not rows:
        raise NotFound(f"tenant {tenant_id} does not exist")
    return rows


def usage_csv(rows: list[dict[str, Any]]) -> str:
    """The usage rows as CSV, one line per tenant, a header first; a text cell that
    would run as a spreadsheet formula (a tenant's name) is written as text."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=USAGE_FIELDS, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_cells.cell(row[k]) for k in USAGE_FIELDS})
    return out.getvalue()

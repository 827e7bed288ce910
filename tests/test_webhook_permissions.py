"""A webhook delivers the event log (sign-ins, failed sign-ins with the names typed and
client addresses, sessions) to its receiver, and its deliveries carry those events: so
whoever aims or reads one needs ``events:read`` as well as the webhook permission, and a
webhook stops delivering once whoever last set it up may no longer read events."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from deskbroker.bootstrap import add_local_user
from deskbroker.config import Settings
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.webhooks import Dispatcher
from deskbroker.services import webhook_limits
from deskbroker.services.context import BrokerContext
from deskbroker.store import fanout
from deskbroker.store import webhooks as webhook_rows
from deskbroker.store.tables import Webhook, utcnow
from tests.helpers import USER_PASSWORD, Api, wait_until
from tests.webhook_receiver import Receiver, receiving

SECRET = "receiver-secret-0123456789"
HOOK = {"name": "siem", "url": "http://example.org/h", "kinds": ["login"], "secret": SECRET}


def _as(api: Api, username: str, permissions: list[str]) -> Api:
    """A user of a custom role of the default tenant, signed in."""
    api.post("roles", {"name": username, "permissions": permissions})
    body: dict[str, Any] = {
        "identity_source_id": api.source_id(),
        "username": username,
        "password": USER_PASSWORD,
        "role": username,
    }
    api.post("users", body)
    return Api(api.client, api.ctx, api.login(username)["token"])


def test_a_webhook_role_without_events_read_neither_aims_nor_reads_a_webhook(api: Api) -> None:
    hooks = _as(api, "hooks", ["webhooks:*"])
    refused = hooks.post("webhooks", HOOK, status=403)
    assert "needs events:read" in refused["detail"]
    assert "does not allow events:read" in refused["detail"]
    assert api.get("webhooks")["total"] == 0
    made = api.post("webhooks", HOOK)
    # Turning one on, or at another receiver, is aiming it too.
    for change in ({"enabled": False}, {"url": "http://example.net/h", "secret": SECRET + "x"}):
        refused = hooks.patch(f"webhooks/{made['id']}", change, status=403)
        assert "needs events:read" in refused["detail"]
    assert api.get(f"webhooks/{made['id']}")["url"] == HOOK["url"]
    refused = hooks.get(f"webhooks/{made['id']}/deliveries", status=403)
    assert "needs events:read" in refused["detail"]
    # A retry sends the failed deliveries' events again; a test event goes where the
    # webhook's events go.
    for action in ("retry", "test"):
        refused = hooks.post(f"webhooks/{made['id']}/{action}", {}, status=403)
        assert "needs events:read" in refused["detail"]
    # What carries no event stays a webhook permission of its own.
    assert hooks.get(f"webhooks/{made['id']}")["name"] == "siem"
    # Deleting needs no events:read; a global administrator's webhook is out of this
    # weaker role's reach (tests/test_webhook_standing.py), one that names no setter is not.
    hooks.delete(f"webhooks/{made['id']}", status=403)
    with api.ctx.db.write() as session:  # as migration 0010 leaves an older webhook
        session.execute(update(Webhook).where(Webhook.id == made["id"]).values(set_by_user_id=None))
    hooks.delete(f"webhooks/{made['id']}")


def test_a_webhook_role_with_events_read_may(api: Api) -> None:
    hooks = _as(api, "watcher", ["webhooks:*", "events:read"])
    made = hooks.post("webhooks", HOOK)
    assert hooks.patch(f"webhooks/{made['id']}", {"enabled": False})["enabled"] is False
    assert hooks.get(f"webhooks/{made['id']}/deliveries")["total"] == 0
    refused = hooks.post(f"webhooks/{made['id']}/retry", {}, status=409)
    assert refused["detail"] == "webhook siem is switched off; enable it first, then retry"
    hooks.patch(f"webhooks/{made['id']}", {"enabled": True})
    assert hooks.post(f"webhooks/{made['id']}/retry", {}, status=200)["requeued"] == 0
    hooks.post(f"webhooks/{made['id']}/test", {}, status=202)


def test_an_api_token_scoped_to_webhooks_alone_is_refused_too(api: Api) -> None:
    """The global administrator's role allows everything; the token's scopes do not."""
    made = api.post("api-tokens", {"name": "hooks", "scopes": ["webhooks:*"], "expires_in_days": 1})
    bot = Api(api.client, api.ctx, made["token"])
    refused = bot.post("webhooks", HOOK, status=403)
    assert "needs events:read" in refused["detail"]
    hook = api.post("webhooks", HOOK)
    bot.get(f"webhooks/{hook['id']}/deliveries", status=403)


# --- a webhook's setter vouches for it -----------------------------------------------
@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No waiting on gaps in the event ids: each fan-out takes every event so far."""
    return settings.model_copy(update={"webhook_settle_s": 0.0, "webhook_timeout_s": 2.0})


@pytest.fixture
def dispatcher(ctx: BrokerContext) -> Iterator[Dispatcher]:
    """The engine's webhooks job, run by the test (no engine running): each run fans out
    every event so far and posts the due deliveries to the receiver."""
    running = Dispatcher(ctx, "permissions-test")
    _fan_out(running)  # the cursor starts at the newest event: history is not sent
    yield running
    running.close(wait=False)


def _fan_out(dispatcher: Dispatcher) -> None:
    dispatcher.run(dispatcher.ctx, DriverCache(dispatcher.ctx), "", utcnow())


def _user_id(api: Api, username: str) -> str:
    return str(api.get(f"users?username={username}")["items"][0]["id"])


# Who signs in to make the next event: (user name, password).
SIGN_IN = ("ann", USER_PASSWORD)


def _login_event(api: Api, who: tuple[str, str] = SIGN_IN) -> str:
    """A sign-in of the default tenant (a login-kind event), fanned out next; its id."""
    api.login(*who)
    return str(api.get("events?kind=login&limit=1")["items"][0]["id"])


def _delivers(
    api: Api,
    dispatcher: Dispatcher,
    receiver: Receiver,
    hook: dict[str, Any],
    who: tuple[str, str] = SIGN_IN,
) -> None:
    """The next event reaches the receiver through ``hook``."""
    event = _login_event(api, who)
    _fan_out(dispatcher)
    wait_until(lambda: event in receiver.ids(), f"event {event} at the receiver")
    assert api.get(f"webhooks/{hook['id']}")["enabled"] is True


def _delivers_nothing(
    api: Api,
    dispatcher: Dispatcher,
    receiver: Receiver,
    hook: dict[str, Any],
    who: tuple[str, str] = SIGN_IN,
) -> None:
    """The next event is fanned out but queued for no delivery of ``hook``."""
    before = api.get(f"webhooks/{hook['id']}/deliveries")["total"]
    event = _login_event(api, who)
    _fan_out(dispatcher)
    assert api.get(f"webhooks/{hook['id']}/deliveries")["total"] == before
    assert event not in receiver.ids()


def _switched_off(api: Api, hook: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        e
        for e in api.get("events?kind=webhook.disabled")["items"]
        if e["detail"]["webhook_id"] == hook["id"]
    ]


@pytest.mark.parametrize("loses", ["role", "disabled", "deleted"])
def test_a_webhook_is_switched_off_once_its_setter_may_no_longer_read_events(
    api: Api, dispatcher: Dispatcher, loses: str
) -> None:
    add_local_user(api.ctx, "ann", USER_PASSWORD)
    watcher = _as(api, "watcher", ["webhooks:*", "events:read"])
    watcher_id = _user_id(api, "watcher")
    with receiving(SECRET) as receiver:
        hook = watcher.post("webhooks", {**HOOK, "url": receiver.url})
        assert hook["set_by_user_id"] == watcher_id
        _delivers(api, dispatcher, receiver, hook)
        assert not _switched_off(api, hook)

        if loses == "role":
            role = next(r for r in api.get("roles")["items"] if r["name"] == "watcher")
            api.patch(f"roles/{role['id']}", {"permissions": ["webhooks:*"]})
            reason = "its setter watcher may no longer read events"
        elif loses == "disabled":
            api.patch(f"users/{watcher_id}", {"disabled": True})
            reason = "its setter watcher is disabled"
        else:
            api.delete(f"users/{watcher_id}")
            reason = f"its setter (user {watcher_id}) no longer exists"
        _delivers_nothing(api, dispatcher, receiver, hook)
        assert api.get(f"webhooks/{hook['id']}")["enabled"] is False
        (event,) = _switched_off(api, hook)
        assert event["detail"]["reason"].startswith(reason), event
        assert event["detail"]["name"] == "siem"
        assert event["detail"]["set_by_user_id"] == event["user_id"] == watcher_id
        _delivers_nothing(api, dispatcher, receiver, hook)
        assert len(_switched_off(api, hook)) == 1

        # A global administrator turning it on again vouches for it in their turn.
        enabled = api.patch(f"webhooks/{hook['id']}", {"enabled": True})
        assert enabled["set_by_user_id"] == _user_id(api, "admin")
        _delivers(api, dispatcher, receiver, hook)
        assert len(_switched_off(api, hook)) == 1
        assert receiver.bad_signatures == 0


def test_a_webhook_from_before_its_setter_was_recorded_keeps_delivering(
    api: Api, ctx: BrokerContext, dispatcher: Dispatcher
) -> None:
    add_local_user(ctx, "ann", USER_PASSWORD)
    watcher = _as(api, "watcher", ["webhooks:*", "events:read"])
    with receiving(SECRET) as receiver:
        hook = watcher.post("webhooks", {**HOOK, "url": receiver.url})
        with ctx.db.write() as session:  # as migration 0010 leaves an older webhook
            session.execute(
                update(Webhook).where(Webhook.id == hook["id"]).values(set_by_user_id=None)
            )
        role = next(r for r in api.get("roles")["items"] if r["name"] == "watcher")
        api.patch(f"roles/{role['id']}", {"permissions": ["webhooks:*"]})
        _delivers(api, dispatcher, receiver, hook)
        assert api.get(f"webhooks/{hook['id']}")["set_by_user_id"] is None
        assert not _switched_off(api, hook)


def test_a_role_from_an_assignment_rule_vouches_while_the_rule_gives_it(
    api: Api, dispatcher: Dispatcher
) -> None:
    """A directory's administrators have a stored role of user and get theirs from a
    rule at each sign-in: the rules' roles count, as they do for the token."""
    add_local_user(api.ctx, "ann", USER_PASSWORD)
    api.post(
        "assignment-rules",
        {
            "identity_source_id": api.source_id(),
            "name": "admins",
            "role": "tenant_admin",
            "conditions": {"group": "admins"},
        },
    )
    made = api.post(
        "users",
        {
            "identity_source_id": api.source_id(),
            "username": "dora",
            "password": USER_PASSWORD,
            "groups": ["admins"],
        },
    )
    assert made["role"] == "user"
    dora = Api(api.client, api.ctx, api.login("dora")["token"])
    with receiving(SECRET) as receiver:
        hook = dora.post("webhooks", {**HOOK, "url": receiver.url})
        _delivers(api, dispatcher, receiver, hook)
        _delivers(api, dispatcher, receiver, hook)
        api.patch(f"users/{made['id']}", {"groups": []})
        _delivers_nothing(api, dispatcher, receiver, hook)
        (event,) = _switched_off(api, hook)
        assert event["detail"]["reason"] == (
            "its setter dora may no longer read events (role user does not allow events:read)"
        )


def test_a_global_administrator_made_tenant_administrator_no_longer_vouches_elsewhere(
    api: Api, dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Their own tenant's events they still read; another tenant's they no longer do."""
    # Each webhook is tested twice within seconds (tests/test_webhook_caps.py has the pace).
    monkeypatch.setattr(webhook_limits.TEST_PACE, "interval_s", 0.0)
    acme = api.post("tenants", {"name": "acme"})
    gina_id = add_local_user(api.ctx, "gina", USER_PASSWORD, role="global_admin")
    gina = Api(api.client, api.ctx, api.login("gina")["token"])
    with receiving(SECRET) as receiver:
        # Test events only: a webhook.test event goes to its own webhook and no other.
        quiet = {**HOOK, "url": receiver.url, "kinds": ["quota_reached"]}
        hook = gina.post("webhooks", {**quiet, "tenant_id": acme["id"]})
        own = gina.post("webhooks", {**quiet, "name": "own"})
        for made in (hook, own):
            api.post(f"webhooks/{made['id']}/test", {}, status=202)
        _fan_out(dispatcher)
        wait_until(lambda: len(receiver.ids()) == 2, "both test events at the receiver")
        api.patch(f"users/{gina_id}", {"role": "tenant_admin"})
        for made in (hook, own):
            api.post(f"webhooks/{made['id']}/test", {}, status=202)
        _fan_out(dispatcher)
        wait_until(lambda: len(receiver.ids()) == 3, "the own tenant's test event")
        assert api.get(f"webhooks/{hook['id']}/deliveries")["total"] == 1
        assert api.get(f"webhooks/{own['id']}/deliveries")["total"] == 2
        assert api.get(f"webhooks/{own['id']}")["enabled"] is True
        (event,) = _switched_off(api, hook)
        assert event["tenant_id"] == acme["id"]
        assert event["detail"]["reason"] == (
            "its setter gina may no longer read this tenant's events "
            "(no longer a global administrator)"
        )
        assert not _switched_off(api, own)


def test_switching_a_webhook_off_fails_what_it_had_queued_and_a_retry_sends_it(
    api: Api, ctx: BrokerContext, dispatcher: Dispatcher
) -> None:
    add_local_user(ctx, "ann", USER_PASSWORD)
    with receiving(SECRET) as receiver:
        hook = api.post("webhooks", {**HOOK, "url": receiver.url})
        event = _login_event(api)
        with ctx.db.write() as session:  # queued, not posted yet
            assert fanout.fan_out(session, utcnow(), 0.0).made == 1
        api.patch(f"webhooks/{hook['id']}", {"enabled": False})
        [queued] = api.get(f"webhooks/{hook['id']}/deliveries")["items"]
        assert queued["state"] == "failed"
        assert queued["last_error"] == "the webhook was switched off"
        _fan_out(dispatcher)
        time.sleep(0.5)  # room for a post that must not come
        assert event not in receiver.ids()
        # Enabled again, a retry sends it.
        api.patch(f"webhooks/{hook['id']}", {"enabled": True})
        assert api.post(f"webhooks/{hook['id']}/retry", {}, status=200)["requeued"] == 1
        _fan_out(dispatcher)
        wait_until(lambda: event in receiver.ids(), f"event {event} at the receiver")


def test_an_attempt_out_when_its_webhook_is_switched_off_is_not_tried_again(
    api: Api, ctx: BrokerContext, dispatcher: Dispatcher
) -> None:
    """The delivery under way when an administrator switches the webhook off fails at
    its attempt's end instead of going back to pending, to be posted stale later."""
    add_local_user(ctx, "ann", USER_PASSWORD)
    hook = api.post("webhooks", {**HOOK, "url": "http://example.org/down"})
    _login_event(api)
    now = utcnow()
    with ctx.db.write() as session:
        assert fanout.fan_out(session, now, 0.0).made == 1
        [out] = webhook_rows.claim(
            session, owner="t", now=now, ttl_s=60, per_webhook=1, per_tenant=1, limit=1
        )
    api.patch(f"webhooks/{hook['id']}", {"enabled": False})  # it is leased: left alone
    assert api.get(f"webhooks/{hook['id']}/deliveries")["items"][0]["state"] == "pending"
    with ctx.db.write() as session:
        webhook_rows.record(
            session,
            out,
            owner="t",
            now=now,
            status=503,
            error="receiver down",
            delivered=False,
            retry_at=now + timedelta(minutes=1),
        )
    [done] = api.get(f"webhooks/{hook['id']}/deliveries")["items"]
    assert done["state"] == "failed" and done["last_error"] == "receiver down"

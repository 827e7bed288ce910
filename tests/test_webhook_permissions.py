"""A webhook delivers the event log (sign-ins, failed sign-ins with the names typed and
client addresses, sessions) to its receiver, and its deliveries carry those events: so
whoever aims or reads one needs ``events:read`` as well as the webhook permission."""

from __future__ import annotations

from typing import Any

from tests.helpers import USER_PASSWORD, Api

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
    hooks.delete(f"webhooks/{made['id']}")


def test_a_webhook_role_with_events_read_may(api: Api) -> None:
    hooks = _as(api, "watcher", ["webhooks:*", "events:read"])
    made = hooks.post("webhooks", HOOK)
    assert hooks.patch(f"webhooks/{made['id']}", {"enabled": False})["enabled"] is False
    assert hooks.get(f"webhooks/{made['id']}/deliveries")["total"] == 0
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

"""The stronger-account rule for webhooks: a webhook is its setter's, so an account
weaker than its setter neither changes (kinds, enabled, url, even its name) nor deletes,
tests or retries it. Otherwise the tenant a global administrator watches through a
webhook could blind them: narrow it to ``quota_reached``, switch it off, aim it at a
receiver of its own, or delete it. A webhook whose setter is gone, or demoted to no more
than the actor, or that names no setter, is everyone's to edit as before."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update

from deskbroker.bootstrap import add_local_user
from deskbroker.store.tables import Webhook
from tests.helpers import ADMIN_PASSWORD, USER_PASSWORD, Api, tenant_admin_of

SECRET = "receiver-secret-0123456789"
HOOK = {"name": "siem", "url": "http://example.org/h", "kinds": ["login"], "secret": SECRET}
# The changes that would blind a monitoring webhook, and one that only looks harmless
# (any change makes the actor its setter, after which everything else is theirs).
BLINDING: tuple[dict[str, Any], ...] = (
    {"kinds": ["quota_reached"]},
    {"enabled": False},
    {"url": "http://example.net/mine", "secret": "attacker-secret-0123456789"},
    {"name": "renamed"},
)


def _tenant_admin(api: Api, username: str = "tad") -> Api:
    """A tenant admin of the tenant that holds the global admin (the default tenant)."""
    add_local_user(api.ctx, username, USER_PASSWORD, role="tenant_admin")
    return Api(api.client, api.ctx, api.login(username)["token"])


def _global_admin(api: Api, username: str) -> tuple[Api, str]:
    """Another global admin of the default tenant, signed in; and their user id."""
    user_id = add_local_user(api.ctx, username, ADMIN_PASSWORD, role="global_admin")
    return Api(api.client, api.ctx, api.login(username, ADMIN_PASSWORD)["token"]), user_id


def _other_tenant_admin(api: Api) -> tuple[Api, str]:
    """The tenant admin of a second tenant, acme, signed in; and acme's id."""
    admin = tenant_admin_of(api, "acme", "acme-admin")
    return admin, str(api.get("tenants?name=acme")["items"][0]["id"])


def _refused_everything(weaker: Api, reader: Api, hook: dict[str, Any], setter: str) -> None:
    """``weaker`` may change, delete, test and retry nothing of ``hook`` (set up by the
    global administrator ``setter``), and the webhook is left exactly as it was."""
    path = f"webhooks/{hook['id']}"
    before = reader.get(path)
    for change in BLINDING:
        detail = weaker.patch(path, change, status=403)["detail"]
        assert detail.startswith(
            f"only a global administrator can change the webhook {before['name']} set up by "
            f"{setter}, who can be global administrator. A webhook is its setter's"
        ), detail
    detail = weaker.delete(path, status=403)["detail"]
    assert detail.startswith(
        f"only a global administrator can delete the webhook {before['name']} set up by {setter}"
    ), detail
    # A test event floods the same receiver, and a retry requeues old events in front of
    # new ones: both would let the watched tenant delay what the watcher sees.
    for action, verb in (("test", "send a test event to"), ("retry", "retry the deliveries of")):
        detail = weaker.post(f"{path}/{action}", {}, status=403)["detail"]
        assert f"only a global administrator can {verb} the webhook" in detail, detail
    assert reader.get(path) == before
    # Reading it, and its deliveries, stays the weaker admin's: they read events anyway.
    assert weaker.get(path)["set_by_user_id"] == before["set_by_user_id"]
    assert weaker.get(f"{path}/deliveries")["total"] == 0


def test_a_tenant_admin_cannot_blind_a_global_admins_webhook_in_their_tenant(api: Api) -> None:
    hook = api.post("webhooks", HOOK)
    tad = _tenant_admin(api)
    _refused_everything(tad, api, hook, "admin")
    # Nor turn it back on once the global administrator switched it off: that too would
    # make the tenant admin its setter, free to change the rest afterwards.
    api.patch(f"webhooks/{hook['id']}", {"enabled": False})
    detail = tad.patch(f"webhooks/{hook['id']}", {"enabled": True}, status=403)["detail"]
    assert "only a global administrator can change the webhook siem" in detail
    assert api.get(f"webhooks/{hook['id']}")["enabled"] is False
    # The global administrator still does all of it.
    path = f"webhooks/{hook['id']}"
    assert api.patch(path, {"enabled": True})["enabled"] is True
    assert api.patch(path, {"kinds": ["login", "session"]})["kinds"] == ["login", "session"]
    api.post(f"{path}/test", {}, status=202)
    assert api.post(f"{path}/retry", {}, status=200)["requeued"] == 0
    api.delete(path)
    assert api.get("webhooks")["total"] == 0


def test_a_tenant_cannot_blind_the_global_admin_watching_it(api: Api) -> None:
    acme_admin, acme = _other_tenant_admin(api)
    hook = api.post("webhooks", {**HOOK, "tenant_id": acme})
    assert hook["tenant_id"] == acme
    _refused_everything(acme_admin, api, hook, "admin")
    # Another global administrator is as strong as the setter: theirs to change.
    other, other_id = _global_admin(api, "root2")
    changed = other.patch(f"webhooks/{hook['id']}", {"kinds": ["login", "connect"]})
    assert changed["kinds"] == ["login", "connect"]
    assert changed["set_by_user_id"] == other_id
    other.delete(f"webhooks/{hook['id']}")


def test_tenant_admins_still_edit_their_own_and_each_others_webhooks(api: Api) -> None:
    tad = _tenant_admin(api)
    peer = _tenant_admin(api, "tad2")
    hook = tad.post("webhooks", HOOK)
    path = f"webhooks/{hook['id']}"
    assert tad.patch(path, {"kinds": ["session"]})["kinds"] == ["session"]
    tad.post(f"{path}/test", {}, status=202)
    # An equal account's webhook is theirs to change as well (they become its setter).
    assert peer.patch(path, {"enabled": False})["enabled"] is False
    assert peer.patch(path, {"enabled": True})["enabled"] is True
    assert tad.post(f"{path}/retry", {}, status=200)["requeued"] == 0
    peer.delete(path)
    assert api.get("webhooks")["total"] == 0


def test_a_weaker_custom_role_cannot_edit_a_tenant_admins_webhook(api: Api) -> None:
    """Not only global administrators are protected: a role that may manage webhooks and
    read events, and nothing else, is weaker than the tenant admin who set one up."""
    tad = _tenant_admin(api)
    hook = tad.post("webhooks", HOOK)
    api.post("roles", {"name": "watcher", "permissions": ["webhooks:*", "events:read"]})
    api.post(
        "users",
        {
            "identity_source_id": api.source_id(),
            "username": "wendy",
            "password": USER_PASSWORD,
            "role": "watcher",
        },
    )
    wendy = Api(api.client, api.ctx, api.login("wendy")["token"])
    detail = wendy.patch(f"webhooks/{hook['id']}", {"enabled": False}, status=403)["detail"]
    assert detail.startswith(
        "you cannot change the webhook siem set up by tad, whose role can be tenant_admin: "
        "it allows "
    ), detail
    assert "A webhook is its setter's" in detail
    wendy.delete(f"webhooks/{hook['id']}", status=403)
    # Their own they manage, and the tenant admin manages theirs.
    mine = wendy.post("webhooks", {**HOOK, "name": "wendys"})
    assert tad.patch(f"webhooks/{mine['id']}", {"enabled": False})["enabled"] is False
    wendy.delete(f"webhooks/{mine['id']}", status=403)  # now the tenant admin's


@pytest.mark.parametrize("fate", ["demoted", "deleted"])
def test_a_webhook_whose_setter_is_demoted_or_deleted_becomes_editable(api: Api, fate: str) -> None:
    root2, root2_id = _global_admin(api, "root2")
    hook = root2.post("webhooks", HOOK)
    path = f"webhooks/{hook['id']}"
    tad = _tenant_admin(api)
    tad.patch(path, {"kinds": ["quota_reached"]}, status=403)
    if fate == "demoted":
        api.patch(f"users/{root2_id}", {"role": "tenant_admin"})
    else:
        api.delete(f"users/{root2_id}")
    changed = tad.patch(path, {"kinds": ["quota_reached"]})
    assert changed["kinds"] == ["quota_reached"]
    tad.delete(path)


def test_a_webhook_with_no_recorded_setter_stays_editable(api: Api) -> None:
    hook = api.post("webhooks", HOOK)
    with api.ctx.db.write() as session:
        # Made before setters were recorded.
        session.execute(update(Webhook).where(Webhook.id == hook["id"]).values(set_by_user_id=None))
    tad = _tenant_admin(api)
    tad.post(f"webhooks/{hook['id']}/test", {}, status=202)
    assert tad.patch(f"webhooks/{hook['id']}", {"enabled": False})["enabled"] is False
    tad.delete(f"webhooks/{hook['id']}")

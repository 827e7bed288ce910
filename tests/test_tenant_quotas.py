"""Per-tenant quotas: desktops imported by the admin API or a scan, concurrent sessions on
connect (reconnects always pass), who may see and change them; on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from deskbroker.api.app import create_app
from deskbroker.bootstrap import add_local_user
from deskbroker.config import Settings
from deskbroker.errors import QuotaReached
from deskbroker.services import desktops, inventory
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Center, Tenant
from tests.desktop_agent import Agent
from tests.helpers import ADMIN_PASSWORD, USER_PASSWORD, Api, scan_now


def machines(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"name": f"m-{i:03d}", "address": f"127.0.5.{i + 1}"} for i in range(start, n)]


def default_tenant(api: Api) -> str:
    return str(api.get("tenants?name=default")["items"][0]["id"])


def set_quota(api: Api, **quota: int | None) -> None:
    api.patch(f"tenants/{default_tenant(api)}", {f"quota_{k}": v for k, v in quota.items()})


def tenant_admin(api: Api, name: str = "boss") -> Api:
    add_local_user(api.ctx, name, ADMIN_PASSWORD, role="tenant_admin")
    return Api(api.client, api.ctx, api.login(name, ADMIN_PASSWORD)["token"])


def test_only_a_global_admin_changes_quotas_and_tenant_admins_see_them(api: Api) -> None:
    set_quota(api, desktops=20, sessions=10)
    boss = tenant_admin(api)
    forbidden = boss.client.patch(
        f"/api/v1/admin/tenants/{default_tenant(api)}",
        json={"quota_desktops": 1000},
        headers=boss.headers,
    )
    assert forbidden.status_code == 403
    assert "global administrator" in forbidden.json()["detail"]
    seen = boss.get("quota")
    assert seen["desktops"] == {"limit": 20, "used": 0}
    assert seen["sessions"] == {"limit": 10, "used": 0}
    assert seen["summary"] == (
        "tenant quota: 0 of 20 desktops; tenant quota: 0 of 10 concurrent sessions"
    )
    # Another tenant's quota is not theirs to read.
    other = api.post("tenants", {"name": "other", "quota_desktops": 3})
    response = boss.client.get(f"/api/v1/admin/quota?tenant_id={other['id']}", headers=boss.headers)
    assert response.status_code == 403
    assert api.get(f"quota?tenant_id={other['id']}")["desktops"]["limit"] == 3
    set_quota(api, desktops=None)
    assert boss.get("quota")["desktops"]["limit"] is None


def test_desktops_beyond_the_quota_are_refused_in_words_and_nothing_is_written(
    api: Api,
) -> None:
    set_quota(api, desktops=3)
    body = {"name": "big", "kind": "static", "params": {"machines": machines(5)}}
    refused = api.post("centers", body, status=409)
    assert refused["title"] == "Quota reached"
    assert refused["detail"] == (
        "center big has 5 new machines, 2 more than the tenant's desktop quota leaves room "
        "for (tenant quota: 0 of 3 desktops; not imported: m-003, m-004); ask a global "
        "administrator to raise the quota, or remove desktops first"
    )
    assert api.get("centers?name=big")["total"] == 0 and api.get("desktops")["total"] == 0

    center = api.post("centers", {**body, "params": {"machines": machines(2)}})
    assert api.get("desktops")["total"] == 2
    more = api.patch(f"centers/{center['id']}", {"params": {"machines": machines(4)}}, status=409)
    assert "2 new machines, 1 more than" in more["detail"]
    assert "(tenant quota: 2 of 3 desktops; not imported: m-003)" in more["detail"]
    assert len(api.get(f"centers/{center['id']}")["params"]["machines"]) == 2
    assert api.get("desktops")["total"] == 2
    # One more fits.
    api.patch(f"centers/{center['id']}", {"params": {"machines": machines(3)}})
    assert api.get("quota")["desktops"] == {"limit": 3, "used": 3}


def test_a_background_scan_imports_up_to_the_quota_and_says_so(
    api: Api, ctx: BrokerContext
) -> None:
    center = api.post(
        "centers", {"name": "lab", "kind": "static", "params": {"machines": machines(2)}}
    )
    set_quota(api, desktops=3)
    # The center now reports five machines (as a cloud would, outside the broker).
    with ctx.db.write() as session:
        row = session.get(Center, center["id"])
        assert row is not None
        row.params = {"machines": machines(5)}
    with ctx.db.write() as session:
        row = session.get(Center, center["id"])
        assert row is not None
        report = inventory.scan(session, ctx, row)
    assert report.status == "quota"
    assert report.message.endswith("; 2 not imported: tenant quota: 3 of 3 desktops")
    assert api.get(f"centers/{center['id']}")["status"] == "quota"
    assert api.get("desktops")["total"] == 3
    # An admin's "scan now" is queued and runs as the background scan does.
    scanned = scan_now(api, center["id"])
    assert scanned["status"] == "quota" and "2 not imported" in scanned["status_message"]
    assert api.get("desktops")["total"] == 3
    set_quota(api, desktops=None)
    assert ", 2 new, " in scan_now(api, center["id"])["status_message"]
    assert api.get("desktops")["total"] == 5


@pytest.fixture
def quick_grant(settings: Settings) -> Iterator[BrokerContext]:
    """A broker whose connects hold a session slot for one second before the agent speaks."""
    context = BrokerContext.from_settings(settings.model_copy(update={"session_grant_s": 1}))
    yield context
    context.db.dispose()


def _connect(client: TestClient, token: str, desktop_id: str) -> Any:
    return client.post(
        f"/api/v1/client/desktops/{desktop_id}/connect",
        json={"protocol": "vnc"},
        headers={"Authorization": f"Bearer {token}"},
    )


# Its grants last one second: in the serial phase, where a loaded machine is less loaded.
@pytest.mark.serial
def test_a_new_session_beyond_the_quota_is_refused_but_a_reconnect_passes(
    api: Api, quick_grant: BrokerContext
) -> None:
    api.seed_pool(3, users=3, ports={"vnc": 5901})
    set_quota(api, sessions=2)
    client = TestClient(create_app(quick_grant))
    users = [api.login(f"user{i}") for i in range(3)]
    tokens = [u["token"] for u in users]
    held = [u["offers"][0]["desktop"]["id"] for u in users]
    assert _connect(client, tokens[0], held[0]).status_code == 200
    assert _connect(client, tokens[1], held[1]).status_code == 200
    refused = _connect(client, tokens[2], held[2])
    assert refused.status_code == 409
    assert refused.json()["title"] == "Quota reached"
    assert refused.json()["detail"].startswith(
        "tenant quota: 2 of 2 concurrent sessions are in use, so no new session can start now"
    )
    # The agents report both sessions; the connects' own hold lapses, the sessions count.
    agents = [Agent.mint(api, d) for d in held]
    agents[0].send("login", "user0")
    agents[1].send("login", "user1")
    time.sleep(1.1)
    assert _connect(client, tokens[2], held[2]).status_code == 409
    # user0 comes back to the session they have, even disconnected: not a new session.
    assert _connect(client, tokens[0], held[0]).status_code == 200
    agents[0].send("disconnect", "user0")
    assert _connect(client, tokens[0], held[0]).status_code == 200
    assert _connect(client, tokens[2], held[2]).status_code == 409
    assert api.get("quota")["sessions"] == {"limit": 2, "used": 2}
    # user0 logs out: once their last connect's hold lapses, user2 may start a session.
    agents[0].send("logout", "user0")
    time.sleep(1.1)
    assert _connect(client, tokens[2], held[2]).status_code == 200
    # Nothing was written for the refused connects: only the granted ones were logged.
    connects = api.get("events?kind=connect")["items"]
    assert sorted(e["actor"] for e in connects).count("user2") == 1


def test_concurrent_connects_never_exceed_the_session_quota(api: Api, ctx: BrokerContext) -> None:
    users = 8
    api.seed_pool(users, users=users, ports={"vnc": 5901})
    set_quota(api, sessions=3)
    logins = [api.login(f"user{i}") for i in range(users)]
    who = [ctx.signer.verify(u["token"]) for u in logins]
    held = [u["offers"][0]["desktop"]["id"] for u in logins]
    # Two brokers on the one database, as in a cluster.
    other = BrokerContext.from_settings(ctx.settings)
    brokers = [ctx, other]
    start = threading.Barrier(users)
    outcomes: list[str] = []
    lock = threading.Lock()

    def connect(n: int) -> None:
        start.wait()
        try:
            desktops.connect(brokers[n % 2], who[n], held[n], "vnc", "10.0.0.1")
            result = "ok"
        except QuotaReached:
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=connect, args=(n,)) for n in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.db.dispose()
    assert sorted(outcomes) == ["ok"] * 3 + ["refused"] * (users - 3)
    assert api.get("quota")["sessions"] == {"limit": 3, "used": 3}


def test_quota_columns_are_the_tenant_rows(ctx: BrokerContext, api: Api) -> None:
    """The admin API's quota fields are what the enforcement reads."""
    set_quota(api, desktops=7, sessions=4)
    with ctx.db.read() as session:
        tenant = session.get(Tenant, default_tenant(api))
        assert tenant is not None
        assert (tenant.quota_desktops, tenant.quota_sessions) == (7, 4)
    assert USER_PASSWORD  # the helpers' users log in with it

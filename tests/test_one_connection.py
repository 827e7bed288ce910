"""A request holds one pooled database connection at a time.

A thread that opens a second unit while its first is open holds two connections, and a
node under load whose threads each hold one and wait for another waits for its pool's
timeout (behind PgBouncer in transaction mode, for a free server connection: until
``query_wait_timeout``, two minutes, every request of the node frozen). The per-node
configuration cache was such a second unit: checked against the database's version
inside the connect's write unit (the quota and the protocol plan) and inside an agent
event's (a rogue login's limits). Here the cache checks on every look (its age set to
0), and every thread's connections are counted as the user's and the agent's requests
run.
"""

from __future__ import annotations

import threading
import traceback
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import event, select

from deskbroker.services.context import BrokerContext
from deskbroker.store.config_version import bump_config_version
from deskbroker.store.tables import Tenant
from tests.desktop_agent import Agent
from tests.helpers import Api, bearer


class Held:
    """The pooled connections each thread holds, and the most any held at once."""

    def __init__(self) -> None:
        self.now: Counter[int] = Counter()
        self.most = 0
        self.where: list[str] = []
        self._lock = threading.Lock()

    def out(self, *_: object) -> None:
        with self._lock:
            me = threading.get_ident()
            self.now[me] += 1
            if self.now[me] > 1:
                # Where the second one was asked for: the broker's frames.
                frames = [
                    f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
                    for f in traceback.extract_stack()
                    if "/deskbroker/" in f.filename
                ]
                self.where.append(" < ".join(reversed(frames[-4:])))
            self.most = max(self.most, self.now[me])

    def back(self, *_: object) -> None:
        with self._lock:
            self.now[threading.get_ident()] -= 1


@pytest.fixture
def held(ctx: BrokerContext) -> Iterator[Held]:
    counted = Held()
    event.listen(ctx.db.engine, "checkout", counted.out)
    event.listen(ctx.db.engine, "checkin", counted.back)
    try:
        yield counted
    finally:
        event.remove(ctx.db.engine, "checkout", counted.out)
        event.remove(ctx.db.engine, "checkin", counted.back)


def test_sign_in_connect_and_agent_events_hold_one_connection_each(
    api: Api, ctx: BrokerContext, held: Held
) -> None:
    api.seed_pool(2, users=2)
    # A quota makes the connect read the tenant's row (the cache says who has one).
    tenant = api.get("tenants?name=default")["items"][0]["id"]
    api.patch(f"tenants/{tenant}", {"quota_sessions": 10})
    ctx.cache.max_age_s = 0.0  # every look at the configuration asks for its version
    held.most = 0

    signed_in = api.login("user0")
    [offer] = signed_in["offers"]
    desktop = offer["desktop"]["id"]
    connect = api.client.post(
        f"/api/v1/client/desktops/{desktop}/connect", json={}, headers=bearer(signed_in["token"])
    )
    assert connect.status_code == 200, connect.text
    listed = api.client.get("/api/v1/client/desktops", headers=bearer(signed_in["token"]))
    assert listed.status_code == 200, listed.text
    agent = Agent.mint(api, desktop)
    assert agent.send("login", "user0")["state"] == "logged_in"
    assert agent.send("logout", "user0")["state"] == "logged_out"
    # A known user the broker did not hand this desktop to: the rogue path reads what
    # the policies allow them.
    rogue = agent.send("login", "user1")
    assert rogue["user"] == "user1" and rogue["state"] == "logged_in"
    agent.send("logout", "user1")

    assert held.most == 1, f"threads held a second connection: {held.where}"


def test_a_quota_set_on_another_node_reaches_the_next_connect(api: Api, ctx: BrokerContext) -> None:
    """The connect checks the view's age before its unit: a session quota another node
    set (its write and the version it moved, nothing told this node's cache) refuses
    the next connect once the view is older than ``max_age_s``."""
    api.seed_pool(1, users=1)
    signed_in = api.login("user0")
    desktop = signed_in["offers"][0]["desktop"]["id"]
    url = f"/api/v1/client/desktops/{desktop}/connect"
    ctx.cache.current(ctx.db)  # the view this node holds, without a quota
    with ctx.db.write() as session:
        tenant = session.scalars(select(Tenant).where(Tenant.name == "default")).one()
        tenant.quota_sessions = 0
        bump_config_version(session, tenant.id)
    ctx.cache.max_age_s = 0.0  # the view's age is past it
    refused = api.client.post(url, json={}, headers=bearer(signed_in["token"]))
    assert refused.status_code == 409, refused.text
    assert "0 of 0 concurrent sessions" in refused.json()["detail"]

"""No desktop is ever handed to two users, whatever the concurrency."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from deskbroker.services.context import BrokerContext
from deskbroker.services.login import LoginResult, LoginService
from deskbroker.store.tables import User
from tests.helpers import USER_PASSWORD, Api

USERS = 200
DESKTOPS = 50


def test_200_concurrent_logins_against_50_desktops(api: Api, ctx: BrokerContext) -> None:
    api.seed_pool(DESKTOPS)
    hashed = ctx.hashing.hash(USER_PASSWORD)
    source = api.source_id()
    with ctx.db.write() as session:
        tenant = api.get("identity-sources?kind=local")["items"][0]["tenant_id"]
        session.add_all(
            User(
                tenant_id=tenant,
                identity_source_id=source,
                username=f"u{i:03d}",
                password_hash=hashed,
                groups=[],
                attributes={},
            )
            for i in range(USERS)
        )
    service = LoginService(ctx)
    start = threading.Barrier(48)

    def one(i: int) -> LoginResult:
        if i < 48:
            start.wait()
        return service.login(f"u{i:03d}", USER_PASSWORD)

    with ThreadPoolExecutor(max_workers=48) as pool:
        results = list(pool.map(one, range(USERS)))

    offers = [r.offers[0] for r in results]
    assigned = [o.desktop.id for o in offers if o.status == "assigned" and o.desktop]
    queued = [o.position for o in offers if o.status == "queued"]
    assert len(assigned) == DESKTOPS
    assert len(set(assigned)) == DESKTOPS, "a desktop was handed out twice"
    assert len(queued) == USERS - DESKTOPS
    assert all(p is not None and p >= 1 for p in queued)
    assert sorted(queued) == list(range(1, USERS - DESKTOPS + 1))

    # The database agrees: 50 assignments, 150 waiting, one login event each.
    assert api.get("assignments?limit=1")["total"] == DESKTOPS
    assert api.get(f"pools/{api.ids['pool']}/status")["counts"]["queued"] == USERS - DESKTOPS
    assert api.get("events?kind=login&limit=1")["total"] == USERS + 1  # + the admin's

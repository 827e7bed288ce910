"""No desktop is ever handed to two users, whatever the concurrency."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from deskbroker.services.context import BrokerContext
from deskbroker.services.login import LoginResult, LoginService
from deskbroker.store.tables import Desktop, User
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


def test_one_user_signing_in_twice_at_once_gets_one_desktop(api: Api, ctx: BrokerContext) -> None:
    """Two brokers, the same users, both sign-ins at the same moment: each user ends up
    with one desktop, and both answers name it (uq_desktops_user_pool_slot; on SQLite the
    single writer already orders them)."""
    users, rounds = 12, 2
    # Twice the desktops: a claim the guard rolls back held a desktop locked meanwhile,
    # and a claim that finds every free desktop locked queues (SKIP LOCKED).
    api.seed_pool(2 * users * rounds)
    hashed = ctx.hashing.hash(USER_PASSWORD)
    with ctx.db.write() as session:
        tenant = api.get("identity-sources?kind=local")["items"][0]["tenant_id"]
        session.add_all(
            User(
                tenant_id=tenant,
                identity_source_id=api.source_id(),
                username=f"twin{i:02d}",
                password_hash=hashed,
                groups=[],
                attributes={},
            )
            for i in range(users * rounds)
        )
    brokers = (LoginService(ctx), LoginService(ctx))
    for round_ in range(rounds):
        names = [f"twin{i:02d}" for i in range(round_ * users, (round_ + 1) * users)]
        start = threading.Barrier(2 * users)

        def one(job: tuple[int, str], start: threading.Barrier = start) -> LoginResult:
            start.wait()
            return brokers[job[0]].login(job[1], USER_PASSWORD)

        jobs = [(side, name) for name in names for side in (0, 1)]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            results = list(pool.map(one, jobs))
        for name, pair in zip(names, zip(results[::2], results[1::2], strict=True), strict=True):
            got = {o.desktop.id for r in pair for o in r.offers if o.desktop}
            assert len(got) == 1, f"{name} got {got}"
            assert all(o.status == "assigned" for r in pair for o in r.offers), [
                (o.status, o.position) for r in pair for o in r.offers
            ]
    with ctx.db.read() as session:
        held = session.execute(
            select(Desktop.assigned_user_id, func.count())
            .where(Desktop.assigned_user_id.is_not(None))
            .group_by(Desktop.assigned_user_id)
        ).all()
    assert len(held) == users * rounds and all(n == 1 for _, n in held), held

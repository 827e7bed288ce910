"""The claim's cost against the pool's size, for ``login.py --desktops 50,20000``.

For each pool size a fresh database (SQLite file, or a throwaway PostgreSQL database) gets
one tenant, one center and one pool of that many desktops, written in bulk the way a scan
or an import writes them (so the statistics refresh after bulk writes is part of what is
measured). A fifth of the desktops are already assigned, a third are stopped, half were
used before at random times: every ordering has real work to do. Then ``claims`` claims
run one after another, each in its own write unit as in a login, and the claim statement
itself is timed (``store.claims.claim``, the same call the login path makes).

The figure that matters is ``claim_spread``: how much slower the median claim is in the
largest pool than in the smallest, as a fraction (0.2 = 20 % slower).
"""

from __future__ import annotations

import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update

from deskbroker.bootstrap import ensure_defaults
from deskbroker.config import Settings
from deskbroker.domain.offers import OfferOrdering
from deskbroker.services.context import BrokerContext
from deskbroker.store import claims
from deskbroker.store.planner import refresh_statistics
from deskbroker.store.tables import Center, Desktop, Pool, PoolMember, User, new_id

ASSIGNED_SHARE = 0.2
STOPPED_SHARE = 0.33
USED_SHARE = 0.5
BATCH = 5000


def _seed(ctx: BrokerContext, desktops: int, users: int, rng: random.Random) -> tuple[str, str]:
    """One pool of ``desktops`` desktops and ``users`` users; returns (pool id, tenant id)."""
    defaults = ensure_defaults(ctx)
    tenant, source = defaults.tenant_id, defaults.local_source_id
    now = datetime.now(UTC)
    center_id, pool_id = new_id(), new_id()
    user_ids = [new_id() for _ in range(users)]
    rows: list[dict[str, Any]] = []
    holders = iter(user_ids[users // 2 :])
    for i in range(desktops):
        holder = next(holders, None) if rng.random() < ASSIGNED_SHARE else None
        used = rng.random() < USED_SHARE
        rows.append(
            {
                "id": new_id(),
                "tenant_id": tenant,
                "center_id": center_id,
                "external_id": f"m{i}",
                "name": f"desk-{i:06d}",
                "address": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                "power_state": "stopped" if rng.random() < STOPPED_SHARE else "running",
                "availability": "available",
                "assigned_user_id": holder,
                "assigned_pool_id": pool_id if holder else None,
                "assignment_kind": "persistent" if holder else None,
                "last_used_at": now - timedelta(seconds=rng.randrange(86400 * 30))
                if used
                else None,
            }
        )
    with ctx.db.write() as session:
        session.execute(
            insert(Center).values(id=center_id, tenant_id=tenant, name="bench", kind="static")
        )
        session.execute(insert(Pool).values(id=pool_id, tenant_id=tenant, name="bench"))
        session.execute(
            insert(User),
            [
                {
                    "id": uid,
                    "tenant_id": tenant,
                    "identity_source_id": source,
                    "username": f"u{n:06d}",
                    "groups": [],
                    "attributes": {},
                }
                for n, uid in enumerate(user_ids)
            ],
        )
        for start in range(0, desktops, BATCH):
            batch = rows[start : start + BATCH]
            session.execute(insert(Desktop), batch)
            session.execute(
                insert(PoolMember), [{"pool_id": pool_id, "desktop_id": r["id"]} for r in batch]
            )
        refresh_statistics(session, written=desktops)
    return pool_id, tenant


class PoolUnderTest:
    """One pool size under test: its own database, seeded, and the users who claim."""

    def __init__(self, url: str, data_dir: Any, desktops: int, count: int) -> None:
        self.desktops = desktops
        self.ctx = BrokerContext.from_settings(Settings(data_dir=data_dir, database_url=url))
        self.pool_id, self.tenant_id = _seed(
            self.ctx, desktops, count + desktops, random.Random(desktops)
        )
        with self.ctx.db.read() as session:
            self.claimants = [
                str(u)
                for u in session.scalars(
                    select(User.id)
                    .where(User.username.like("u%"))
                    .order_by(User.username)
                    .limit(count)
                )
            ]
        self.times: list[float] = []

    def claim_once(self, user_id: str, ordering: OfferOrdering) -> float:
        """One claim in its own write unit (timed: the statement), then its release."""
        with self.ctx.db.write() as session:
            start = time.perf_counter()
            held = claims.claim(
                session,
                tenant_id=self.tenant_id,
                pool_id=self.pool_id,
                user_id=user_id,
                kind="persistent",
                ordering=ordering,
            )
            ms = (time.perf_counter() - start) * 1000
        if held is None:
            raise RuntimeError(f"the pool of {self.desktops} ran out of free desktops")
        # Released at once, as a logout would, so the pool never runs dry and the
        # desktop goes to the back of the least-recently-used orderings.
        with self.ctx.db.write() as session:
            claims.unassign(session, desktop_id=held.id, user_id=user_id)
            session.execute(
                update(Desktop).where(Desktop.id == held.id).values(last_used_at=datetime.now(UTC))
            )
        return ms

    def figures(self) -> dict[str, Any]:
        times = sorted(self.times)
        return {
            "desktops": self.desktops,
            "claims": len(times),
            "claim_ms": round(statistics.median(times), 3),
            "claim_p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
            "claim_mean_ms": round(statistics.fmean(times), 3),
        }


def measure(
    pools: list[PoolUnderTest], count: int, ordering: OfferOrdering
) -> list[dict[str, Any]]:
    """``count`` claims in each pool, taking turns between the pools so that whatever
    else the machine does weighs on every size alike."""
    for n in range(count):
        for pool in pools:
            ms = pool.claim_once(pool.claimants[n], ordering)
            if n >= 10:  # the first ten warm the connection pool and the plan cache
                pool.times.append(ms)
    return [pool.figures() for pool in pools]


def spread(per_size: list[dict[str, Any]]) -> float:
    """How much slower the largest pool's median claim is than the smallest's."""
    first, last = per_size[0]["claim_ms"], per_size[-1]["claim_ms"]
    return round((last - first) / first, 3) if first else 0.0

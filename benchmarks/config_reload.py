#!/usr/bin/env python3
"""Config reload: what one tenant's change costs every broker's next login.

Each broker keeps the configuration logins resolve (tenants, identity sources and rules,
policies and entries, pools, protocol plans, roles) in a per-node cache, checked against
a version every write moves. Seeded with ``--tenants`` tenants of ``--pools`` pools, a
policy offering them all with a rule for it, and a protocol plan each (rows written
directly), the benchmark times:

- ``full_load_ms``: the cache loaded from nothing (a node's first login);
- ``after_write_ms_p50`` / ``_max``: the reload after one tenant's administrator renamed
  one of its pools through the admin API (``--writes`` times, each a different tenant),
  which is what every broker's next login or connect pays after any tenant's write;
- ``plans_lookup_us``: the mean time to find one pool's power and release plans
  (``ConfigCache.plans_for_pool``, what every agent event of a pooled desktop asks), over
  every pool, and ``plans_first_lookup_ms`` the first look after a reload (which builds
  the view's index).

Usage::

    .venv/bin/python benchmarks/config_reload.py --json
    .venv/bin/python benchmarks/config_reload.py --json --db postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cloud import broker, emit  # a sibling script
from deskbroker.api.app import create_app
from deskbroker.bootstrap import add_local_user
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import (
    AssignmentRuleRow,
    IdentitySource,
    Policy,
    PolicyEntry,
    Pool,
    ProtocolPlan,
    Tenant,
    new_id,
)

PASSWORD = "benchmark-password-0123"


def seed(ctx: BrokerContext, tenants: int, pools: int) -> list[tuple[str, list[str]]]:
    """The tenants, each with its pools, a policy offering them, a local source with one
    rule, and a protocol plan; each tenant's name and pool ids."""
    made: list[tuple[str, list[str]]] = []
    rows: dict[type, list[dict[str, object]]] = {
        m: [] for m in (Tenant, IdentitySource, Policy, Pool, PolicyEntry, AssignmentRuleRow)
    }
    rows[ProtocolPlan] = []
    for t in range(tenants):
        tenant_id, source_id, policy_id = new_id(), new_id(), new_id()
        name = f"tenant{t:04d}"
        rows[Tenant].append({"id": tenant_id, "name": name, "display_name": name})
        rows[IdentitySource].append(
            {
                "id": source_id,
                "tenant_id": tenant_id,
                "name": "local",
                "kind": "local",
                "params": {},
            }
        )
        rows[Policy].append({"id": policy_id, "tenant_id": tenant_id, "name": "staff"})
        rows[AssignmentRuleRow].append(
            {
                "id": new_id(),
                "tenant_id": tenant_id,
                "identity_source_id": source_id,
                "name": "everyone",
                "conditions": {},
                "policy_id": policy_id,
            }
        )
        rows[ProtocolPlan].append(
            {"id": new_id(), "tenant_id": tenant_id, "name": "rdp", "protocols": []}
        )
        pool_ids = []
        for p in range(pools):
            pool_id = new_id()
            pool_ids.append(pool_id)
            rows[Pool].append({"id": pool_id, "tenant_id": tenant_id, "name": f"pool{p}"})
            rows[PolicyEntry].append(
                {"id": new_id(), "policy_id": policy_id, "pool_id": pool_id, "position": p}
            )
        made.append((name, pool_ids))
    with ctx.db.write() as session:
        for model in (Tenant, IdentitySource, Policy, Pool, PolicyEntry, AssignmentRuleRow):
            session.execute(insert(model), rows[model])
        session.execute(insert(ProtocolPlan), rows[ProtocolPlan])
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=500)
    parser.add_argument("--pools", type=int, default=5, help="pools per tenant")
    parser.add_argument("--writes", type=int, default=20)
    parser.add_argument("--db", default=None, help="database URL (default: SQLite)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    with broker(args.db) as ctx:
        tenants = seed(ctx, args.tenants, args.pools)
        with TestClient(create_app(ctx)) as client:
            ctx.cache.invalidate()
            started = time.perf_counter()
            view = ctx.cache.current(ctx.db)
            full_ms = (time.perf_counter() - started) * 1000
            if len(view.pools) < args.tenants * args.pools:
                raise SystemExit(f"the cache holds {len(view.pools)} pools, not all seeded")
            after: list[float] = []
            for i in range(args.writes):
                name, pool_ids = tenants[i % len(tenants)]
                add_local_user(ctx, f"boss{i}", PASSWORD, role="tenant_admin", tenant_name=name)
                signed = client.post(
                    "/api/v1/auth/login",
                    json={"username": f"boss{i}", "password": PASSWORD, "tenant": name},
                )
                signed.raise_for_status()
                headers = {"Authorization": f"Bearer {signed.json()['token']}"}
                ctx.cache.current(ctx.db, fresh=True)  # the sign-in's own change seen
                changed = client.patch(
                    f"/api/v1/admin/pools/{pool_ids[0]}",
                    json={"name": f"renamed{i}"},
                    headers=headers,
                )
                changed.raise_for_status()
                started = time.perf_counter()
                view = ctx.cache.current(ctx.db, fresh=True)
                after.append((time.perf_counter() - started) * 1000)
                if view.pools[pool_ids[0]].name != f"renamed{i}":
                    raise SystemExit("the reloaded cache does not hold the change")
            with ctx.db.read() as session:
                assert session.scalar(select(Pool.name).where(Pool.id == tenants[0][1][0]))
            every_pool = [pool_id for _, pool_ids in tenants for pool_id in pool_ids]
            started = time.perf_counter()
            ctx.cache.plans_for_pool(ctx.db, every_pool[0])
            first_lookup_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            for pool_id in every_pool:
                ctx.cache.plans_for_pool(ctx.db, pool_id)
            lookup_us = (time.perf_counter() - started) * 1e6 / len(every_pool)

    emit(
        {
            "backend": "postgresql" if args.db and args.db.startswith("postgresql") else "sqlite",
            "tenants": args.tenants,
            "pools": args.tenants * args.pools,
            "full_load_ms": round(full_ms, 1),
            "after_write_ms_p50": round(statistics.median(after), 2),
            "after_write_ms_max": round(max(after), 2),
            "plans_first_lookup_ms": round(first_lookup_ms, 2),
            "plans_lookup_us": round(lookup_us, 2),
        },
        args.json,
        "Config reload after one tenant's write",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

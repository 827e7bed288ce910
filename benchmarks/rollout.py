"""Rollout benchmark: a pool of N desktops built against cloudsim, then rolled onto a
new image (every desktop free, so every one is rebuilt).

    benchmarks/rollout.py --desktops 100 --batch 10 --json [--build-s 1] [--db URL]

Prints ``wall_s`` (from the rollout's start to ``done``), the bound the cloud sets
(desktops / batch x build time), ``rebuild_requests`` (POST .../action, one per desktop
expected), ``broker_cpu_s`` (the whole process: engine and the 0.1 s progress reads)
and ``sql_statements`` in that time.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cloud import add_center, broker, cloud, emit, sim
from deskbroker.engine.runner import Engine
from deskbroker.metrics import SQL_STATEMENTS
from deskbroker.security import TokenClaims
from deskbroker.services import rollouts
from deskbroker.services.queues import refresh_pools
from deskbroker.store.tables import Center, Pool


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--desktops", type=int, default=100)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--build-s", type=float, default=1.0)
    parser.add_argument("--db", default=None, help="database URL (default: SQLite)")
    parser.add_argument("--timeout-s", type=float, default=900)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    n = args.desktops
    quota = f"instances={n + 10},cores={n * 2 + 10},ram={n * 1024 + 10240}"
    with (
        cloud("--quota", quota, "--timings", f"build={args.build_s}") as url,
        broker(args.db, provision_poll_s=0.1, engine_tick_s=0.05, engine_workers=32) as ctx,
    ):
        center_id = add_center(ctx, url, max_in_flight=50, retry_base_s=0.05)
        sim(url, "POST", "/seed/images", {"count": 1, "name_prefix": "golden"})
        with ctx.db.write() as session:
            center = session.get(Center, center_id)
            assert center is not None
            tenant_id = center.tenant_id
            pool = Pool(
                tenant_id=tenant_id,
                name="bench",
                center_ids=[center_id],
                filters=[],
                desktop_ids=[],
                provisioning={
                    "enabled": True,
                    "min_unassigned": n,
                    "max_total": n,
                    "parameters": {
                        "name_template": "bench-{SEQUENCE:5}",
                        "image": "cirros-0.6.2-x86_64-disk",
                        "flavor": "m1.tiny",
                    },
                },
            )
            session.add(pool)
            session.flush()
            pool_id = pool.id
            refresh_pools(session, tenant_id)
        who = TokenClaims(
            user_id="bench",
            tenant_id=tenant_id,
            role="global_admin",
            username="bench",
            expires_at=int(time.time()) + 3600,
            token_id="bench",
        )
        engine = Engine(ctx)
        engine.start()
        deadline = time.monotonic() + args.timeout_s
        while _free(ctx, pool_id) < n:
            if time.monotonic() > deadline:
                raise SystemExit("the pool was not built in time")
            time.sleep(0.2)
        statements_before = SQL_STATEMENTS._value.get()
        cpu_before = time.process_time()
        started = time.perf_counter()
        request = rollouts.RolloutRequest(image="golden-00000", batch_size=args.batch)
        rollouts.start(ctx, pool_id, request, who)
        while (progress := rollouts.status(ctx, pool_id, who))["state"] != "done":
            if time.monotonic() > deadline:
                raise SystemExit(f"rollout not done: {progress['summary']}")
            time.sleep(0.1)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
        statements = SQL_STATEMENTS._value.get() - statements_before
        engine.stop(wait=True)
        rebuilds = len(
            sim(url, "GET", f"/requests?method=POST&path=/action$&limit={n * 10}")["requests"]
        )
    bound = n / args.batch * args.build_s
    emit(
        {
            "desktops": n,
            "backend": "postgresql" if args.db and args.db.startswith("postgresql") else "sqlite",
            "batch": args.batch,
            "build_s": args.build_s,
            "bound_s": round(bound, 2),
            "wall_s": round(wall, 2),
            "wall_over_bound": round(wall / bound, 3),
            "broker_cpu_s": round(cpu, 2),
            "rebuild_requests": rebuilds,
            "sql_statements": int(statements),
            "summary": progress["summary"],
        },
        args.json,
        "rollout",
    )
    return 0


def _free(ctx: object, pool_id: str) -> int:
    from deskbroker.services import pools

    with ctx.db.read() as session:  # type: ignore[attr-defined]
        return int(pools.free_count(session, pool_id))


if __name__ == "__main__":
    sys.exit(main())

"""Provisioning benchmark: a pool of N desktops built against cloudsim.

    benchmarks/provision.py --desktops 1000 --json [--build-s 1] [--in-flight 20] [--db URL]

Prints ``wall_s``, ``broker_cpu_s``, ``create_requests`` and ``max_inflight``, with the
bound the cloud sets (desktops / in-flight x build time). Targets: wall time within 20%
of that bound, broker CPU at most 10 s for 1000 desktops.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sqlalchemy import func, select

from _cloud import add_center, broker, cloud, emit, sim
from deskbroker.engine.runner import Engine
from deskbroker.metrics import SQL_STATEMENTS
from deskbroker.services.desktops import refresh_pools
from deskbroker.store.tables import Desktop, Pool, ProvisioningTask


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--desktops", type=int, default=1000)
    parser.add_argument("--build-s", type=float, default=1.0)
    parser.add_argument("--in-flight", type=int, default=20)
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
        center_id = add_center(ctx, url, max_in_flight=args.in_flight, retry_base_s=0.05)
        with ctx.db.write() as session:
            center = session.get(Pool, center_id)
            pool = Pool(
                tenant_id=ctx.db and _tenant(session, center_id),
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
            refresh_pools(session, pool.tenant_id)
            del center

        peak = 0
        done = threading.Event()

        def ready() -> int:
            with ctx.db.read() as session:
                return int(
                    session.scalar(
                        select(func.count())
                        .select_from(Desktop)
                        .where(
                            Desktop.power_state == "running", Desktop.availability == "available"
                        )
                    )
                    or 0
                )

        def watch() -> None:
            nonlocal peak
            while not done.is_set():
                with ctx.db.read() as session:
                    flying = (
                        session.scalar(
                            select(func.count())
                            .select_from(ProvisioningTask)
                            .where(
                                ProvisioningTask.state.in_(("creating", "waiting", "addressing"))
                            )
                        )
                        or 0
                    )
                peak = max(peak, int(flying))
                done.wait(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        statements_before = SQL_STATEMENTS._value.get()
        engine = Engine(ctx)
        cpu_before = time.process_time()
        started = time.perf_counter()
        watcher.start()
        engine.start()
        deadline = started + args.timeout_s
        while ready() < n:
            if time.perf_counter() > deadline:
                raise SystemExit(f"only {ready()} of {n} desktops after {args.timeout_s} s")
            time.sleep(0.1)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
        statements = SQL_STATEMENTS._value.get() - statements_before
        engine.stop(wait=True)
        done.set()
        watcher.join()
        creates = len(
            sim(url, "GET", f"/requests?method=POST&path=/servers&limit={n * 10}")["requests"]
        )
        api_requests = sim(url, "GET", "/counts")["total"]
    bound = n / args.in_flight * args.build_s
    emit(
        {
            "desktops": n,
            "backend": "postgresql" if args.db and args.db.startswith("postgresql") else "sqlite",
            "build_s": args.build_s,
            "in_flight_limit": args.in_flight,
            "bound_s": round(bound, 2),
            "wall_s": round(wall, 2),
            "wall_over_bound": round(wall / bound, 3),
            "broker_cpu_s": round(cpu, 2),
            "create_requests": creates,
            "max_inflight": peak,
            "api_requests": api_requests,
            "sql_statements": int(statements),
            "pool": pool_id,
        },
        args.json,
        "provisioning",
    )
    return 0


def _tenant(session: object, center_id: str) -> str:
    from deskbroker.store.tables import Center

    center = session.get(Center, center_id)  # type: ignore[attr-defined]
    return str(center.tenant_id)


if __name__ == "__main__":
    sys.exit(main())

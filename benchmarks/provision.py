"""Provisioning benchmark: a pool of N desktops built against cloudsim.

    benchmarks/provision.py --desktops 1000 --json [--build-s 1] [--in-flight 20] [--db URL]

Prints ``wall_s``, ``broker_cpu_s``, ``create_requests`` and ``max_inflight``, with the
bound the cloud sets (desktops / in-flight x build time). Targets: wall time within 20%
of that bound, broker CPU at most 10 s for 1000 desktops.

``broker_cpu_s`` is the broker process's CPU time (cloudsim runs in a child process)
less that of the benchmark's own monitor thread, which samples the database every 50 ms
and is reported as ``monitor_cpu_s``; ``sql_statements`` likewise leaves out the
monitor's samples.
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
from deskbroker.services.queues import refresh_pools
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

        # One monitor thread samples the tasks every 50 ms (ready and in flight, both
        # counted on the state index) and, once every task is ready, checks that the
        # desktops are running and available. Its statements and CPU time are the
        # benchmark's: they are left out of the broker's figures.
        desktops, tasks = Desktop.__table__.c, ProvisioningTask.__table__.c
        sample = select(
            select(func.count()).where(tasks.state == "ready").scalar_subquery(),
            select(func.count())
            .where(tasks.state.in_(("creating", "waiting", "addressing")))
            .scalar_subquery(),
        )
        available = select(func.count()).where(
            desktops.power_state == "running", desktops.availability == "available"
        )
        peak = 0
        ready = 0
        samples = 0
        monitor_cpu = 0.0
        done = threading.Event()
        converged = threading.Event()

        def watch() -> None:
            nonlocal peak, ready, samples, monitor_cpu
            cpu = time.thread_time()
            # One connection for the whole run: no pool checkout (or ping) per sample.
            with ctx.db.engine.connect() as conn:
                while not done.is_set():
                    built, flying = conn.execute(sample).one()
                    samples += 1
                    if built >= n and not converged.is_set():
                        ready = int(conn.execute(available).scalar() or 0)
                        samples += 1
                    conn.rollback()  # the next sample sees what was committed since
                    peak = max(peak, int(flying))
                    if ready >= n:
                        converged.set()
                    done.wait(0.05)
            monitor_cpu = time.thread_time() - cpu

        watcher = threading.Thread(target=watch, daemon=True)
        statements_before = SQL_STATEMENTS._value.get()
        engine = Engine(ctx)
        cpu_before = time.process_time()
        started = time.perf_counter()
        watcher.start()
        engine.start()
        if not converged.wait(args.timeout_s):
            raise SystemExit(f"only {ready} of {n} desktops after {args.timeout_s} s")
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
        statements = SQL_STATEMENTS._value.get() - statements_before
        engine.stop(wait=True)
        done.set()
        watcher.join()
        # The monitor's statements (one a sample) and CPU are the benchmark's, not the
        # broker's; its CPU is measured up to its end, a little past ``cpu``.
        statements -= samples
        cpu -= monitor_cpu
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
            "monitor_cpu_s": round(monitor_cpu, 2),
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

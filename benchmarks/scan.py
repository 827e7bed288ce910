"""Center scan benchmark: full and incremental scans of an OpenStack project.

    benchmarks/scan.py --servers 10000 --json [--db URL]

Prints ``full_scan_s`` (first scan: 10,000 desktops imported), ``full_rescan_s``,
``incremental_scan_s`` (nothing changed), ``api_requests_full``,
``api_requests_incremental`` and the same for 100 changed servers. Targets: a full scan
of 10,000 servers within 2 s of broker wall time; an incremental scan with nothing
changed in 1 request and at most 50 ms.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cloud import add_center, broker, cloud, emit, sim
from deskbroker.centers.openstack.driver import OpenStackCenter
from deskbroker.engine.drivers import DriverCache
from deskbroker.services import inventory
from deskbroker.store.tables import Center


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", type=int, default=10000)
    parser.add_argument("--db", default=None, help="database URL (default: SQLite)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    with cloud("--quota", f"instances={args.servers + 100}") as url, broker(args.db) as ctx:
        sim(url, "POST", "/seed/servers", {"count": args.servers, "project": "demo"})
        # Nova's changes-since has whole seconds; scans come minutes apart in real life.
        time.sleep(2.1)
        center_id = add_center(ctx, url)
        drivers = DriverCache(ctx)

        def timed_scan(full: bool) -> tuple[float, int, str]:
            with ctx.db.write() as session:
                center = session.get(Center, center_id)
                assert center is not None
                driver = drivers.get(center)
                assert isinstance(driver, OpenStackCenter)
                before = driver.session.requests
                started = time.perf_counter()
                report = inventory.scan(session, ctx, center, full=full, driver=driver)
            elapsed = time.perf_counter() - started
            if report.status != "ok":
                raise SystemExit(f"scan failed: {report.message}")
            return elapsed, driver.session.requests - before, report.message

        # Authenticate once so token issuance is not counted as scanning.
        with ctx.db.read() as session:
            center = session.get(Center, center_id)
            assert center is not None
            drivers.get(center).session.connection().authorize()  # type: ignore[attr-defined]
        full_s, full_requests, full_words = timed_scan(True)
        rescan_s, _, _ = timed_scan(True)
        incremental_s, incremental_requests, _ = timed_scan(False)
        servers = sim(url, "GET", "/servers?project=demo")["servers"]
        for server in servers[:100]:
            sim(url, "PUT", f"/servers/{server['id']}/state", {"status": "SHUTOFF"})
        time.sleep(1.1)
        changed_s, changed_requests, changed_words = timed_scan(False)

    emit(
        {
            "servers": args.servers,
            "backend": "postgresql" if args.db and args.db.startswith("postgresql") else "sqlite",
            "full_scan_s": round(full_s, 3),
            "full_rescan_s": round(rescan_s, 3),
            "incremental_scan_s": round(incremental_s, 4),
            "incremental_100_changed_s": round(changed_s, 4),
            "api_requests_full": full_requests,
            "api_requests_incremental": incremental_requests,
            "api_requests_incremental_100_changed": changed_requests,
            "full_scan": full_words,
            "incremental_100_changed": changed_words,
        },
        args.json,
        "center scan",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

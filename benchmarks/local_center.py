"""local center benchmark: real Xvnc sessions on 127.0.0.1, the driver's whole cost.

    benchmarks/local_center.py --desktops 10 --json

Prints ``build_s_avg`` (slot, password file, Xvnc listening, session started, one at a
time), ``inventory_s`` (every state file and its processes in /proc),
``stop_start_s_avg`` (stop until Xvnc is gone, then start until it listens again) and
``terminate_s_avg``. Sessions run ``xlogo`` (as ``nobody`` when run as root).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.centers import local_host

from _cloud import emit
from deskbroker.centers.base import CENTER_KEY, DESKTOP_KEY, PowerAction, ProvisionRequest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--desktops", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n = args.desktops

    for state in local_host.state_dir():
        driver = local_host.open_local(state, slots=n)
        try:
            started = time.perf_counter()
            ids = [
                driver.create(
                    ProvisionRequest(
                        name=f"bench-{i:03d}", metadata={CENTER_KEY: "bench", DESKTOP_KEY: f"d{i}"}
                    )
                )
                for i in range(n)
            ]
            build_s = time.perf_counter() - started

            started = time.perf_counter()
            machines = driver.inventory()
            inventory_s = time.perf_counter() - started
            assert len(machines) == n

            by_id = {m.external_id: m for m in machines}
            started = time.perf_counter()
            for external in ids:
                driver.power(by_id[external], PowerAction.STOP)
                driver.power(by_id[external], PowerAction.START)
            cycle_s = time.perf_counter() - started

            started = time.perf_counter()
            for external in ids:
                driver.terminate(by_id[external])
            terminate_s = time.perf_counter() - started
        finally:
            local_host.stop_all(driver)

    emit(
        {
            "desktops": n,
            "build_s_avg": round(build_s / n, 3),
            "inventory_s": round(inventory_s, 4),
            "stop_start_s_avg": round(cycle_s / n, 3),
            "terminate_s_avg": round(terminate_s / n, 3),
        },
        args.json,
        "local center (Xvnc on 127.0.0.1)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

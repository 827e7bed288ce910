"""vSphere center benchmark on govmomi's vCenter simulator (``make setup`` builds it).

    benchmarks/vsphere_center.py --desktops 50 --json

Prints ``clone_per_s`` (linked clone + mark + power on, one at a time),
``inventory_s`` (a full listing of every VM through the property collector),
``find_tagged_s``, ``power_actions_per_s`` (suspend/resume pairs) and
``terminate_per_s``. The simulator answers at once on loopback, so these are the
broker's side of each call (SOAP, the deadline's helper thread, task polling) plus the
simulator's, not a real vCenter's (where a clone's disk work dominates).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.centers.vcsim import PASSWORD, running

from _cloud import emit
from deskbroker import outbound
from deskbroker.centers.base import CENTER_KEY, DESKTOP_KEY, PowerAction, ProvisionRequest
from deskbroker.centers.vsphere import VsphereCenter


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--desktops", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n = args.desktops

    # The simulator listens on loopback, which the outbound policy denies by default.
    outbound.install(outbound.OutboundPolicy.from_text("127.0.0.0/8", outbound.DEFAULT_DENY))
    with running("-vms", "0", "-templates", "1") as sim:
        driver = VsphereCenter(sim.params(), {"password": PASSWORD})
        started = time.perf_counter()
        ids = [
            driver.create(
                ProvisionRequest(
                    name=f"vdi-{i:05d}",
                    metadata={CENTER_KEY: "bench", DESKTOP_KEY: f"d{i}"},
                    tags=(f"task-{i}",),
                    parameters={"template": "template-0"},
                )
            )
            for i in range(n)
        ]
        clone_s = time.perf_counter() - started

        started = time.perf_counter()
        machines = driver.inventory()
        inventory_s = time.perf_counter() - started
        assert len(machines) == n

        started = time.perf_counter()
        assert len(driver.find_tagged(f"task-{n // 2}")) == 1
        find_s = time.perf_counter() - started

        by_id = {m.external_id: m for m in machines}
        sample = ids[: min(n, 25)]
        started = time.perf_counter()
        for external in sample:
            driver.power(by_id[external], PowerAction.SUSPEND)
            driver.power(by_id[external], PowerAction.RESUME)
        power_s = time.perf_counter() - started

        started = time.perf_counter()
        for external in ids:
            driver.terminate(by_id[external])
        terminate_s = time.perf_counter() - started
        driver.vcenter.close()

    emit(
        {
            "desktops": n,
            "clone_per_s": round(n / clone_s, 1),
            "inventory_s": round(inventory_s, 3),
            "find_tagged_s": round(find_s, 3),
            "power_actions_per_s": round(2 * len(sample) / power_s, 1),
            "terminate_per_s": round(n / terminate_s, 1),
        },
        args.json,
        "vSphere center (govmomi simulator)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

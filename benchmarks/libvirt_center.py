"""libvirt center benchmark on libvirt's test driver (no daemon): the driver's own cost.

    benchmarks/libvirt_center.py --desktops 200 --json

Prints ``build_per_s`` (overlay volume + define + start, one at a time),
``inventory_s`` (a full listing of every domain: state, XML, address),
``find_tagged_s``, ``power_actions_per_s`` (suspend/resume pairs) and
``terminate_per_s``. The test driver answers in-process, so these are the broker's side
of each call (XML building and parsing, the deadline's helper thread), not a real host's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.centers.libvirt_node import NODE_XML

from _cloud import emit
from deskbroker.centers.base import CENTER_KEY, DESKTOP_KEY, PowerAction, ProvisionRequest
from deskbroker.centers.libvirt import LibvirtCenter


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--desktops", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n = args.desktops

    with tempfile.TemporaryDirectory() as directory:
        # A 100 MiB template: the test driver's pools hold 100 GiB, each overlay
        # allocated in full.
        node = Path(directory) / "node.xml"
        node.write_text(
            NODE_XML.replace(
                "<capacity unit='GiB'>4</capacity>", "<capacity unit='MiB'>100</capacity>"
            )
        )
        params = {"uri": f"test://{node}", "domain_type": "test", "storage_pool": "desktops"}
        driver = LibvirtCenter({**params, "timeout_s": 60}, {})
        started = time.perf_counter()
        ids = [
            driver.create(
                ProvisionRequest(
                    name=f"vdi-{i:05d}",
                    metadata={CENTER_KEY: "bench", DESKTOP_KEY: f"d{i}"},
                    tags=(f"task-{i}",),
                    parameters={"image": "win11-base.qcow2", "memory_mib": 512, "vcpus": 1},
                )
            )
            for i in range(n)
        ]
        build_s = time.perf_counter() - started

        started = time.perf_counter()
        machines = driver.inventory()
        inventory_s = time.perf_counter() - started
        assert len(machines) == n + 1

        started = time.perf_counter()
        assert len(driver.find_tagged(f"task-{n // 2}")) == 1
        find_s = time.perf_counter() - started

        by_id = {m.external_id: m for m in machines}
        sample = ids[: min(n, 100)]
        started = time.perf_counter()
        for external in sample:
            driver.power(by_id[external], PowerAction.SUSPEND)
            driver.power(by_id[external], PowerAction.RESUME)
        power_s = time.perf_counter() - started

        started = time.perf_counter()
        for external in ids:
            driver.terminate(by_id[external])
        terminate_s = time.perf_counter() - started
        driver.hypervisor.close()

    emit(
        {
            "desktops": n,
            "build_per_s": round(n / build_s, 1),
            "inventory_s": round(inventory_s, 3),
            "find_tagged_s": round(find_s, 3),
            "power_actions_per_s": round(2 * len(sample) / power_s, 1),
            "terminate_per_s": round(n / terminate_s, 1),
        },
        args.json,
        "libvirt center (test driver)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

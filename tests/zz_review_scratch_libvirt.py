"""Review scratch: one tenant's silent libvirt hosts take every libvirt helper place of
the process (no per-tenant share), so another tenant's libvirt center is refused."""
from __future__ import annotations

import time

from deskbroker.bootstrap import add_local_user
from deskbroker.centers.libvirt.connection import LIBVIRT_CALLS
from tests.helpers import ADMIN_PASSWORD, Api, run_queued_scan
from tests.isolation_world import login
from tests.tarpit import tarpit


def test_one_tenant_takes_every_libvirt_place(api: Api) -> None:
    api.post("tenants", {"name": "b", "display_name": "b corp"})
    add_local_user(api.ctx, "b-boss", ADMIN_PASSWORD, role="tenant_admin", tenant_name="b")
    api.ctx.cache.invalidate()
    b = Api(api.client, api.ctx, login(api.client, "b-boss", ADMIN_PASSWORD, "b"))
    with tarpit() as pit, tarpit() as victim_pit:
        # The victim: tenant A's (the global admin's) libvirt center.
        victim = api.post("centers", {"name": "a-kvm", "kind": "libvirt",
                                      "params": {"uri": f"qemu+tcp://127.0.0.1:{victim_pit.port}/system", "timeout_s": 1}})
        made = []
        for i in range(34):
            c = b.post("centers", {"name": f"b-kvm-{i}", "kind": "libvirt",
                                   "params": {"uri": f"qemu+tcp://127.0.0.1:{pit.port}/b{i}", "timeout_s": 0.2}})
            made.append(c["id"])
        started = time.monotonic()
        for cid in made:
            c = run_queued_scan(b, cid)
        print("tenant B's scans took", round(time.monotonic() - started, 1), "s; live libvirt helpers:", LIBVIRT_CALLS.live,
              "accepted by B's tarpit:", pit.accepted)
        time.sleep(2)
        print("after 2 s, live helpers:", LIBVIRT_CALLS.live)
        after = run_queued_scan(api, victim["id"])
        print("tenant A's center:", after["status"], "|", after["status_message"])
        print("victim pit accepted:", victim_pit.accepted)
        assert LIBVIRT_CALLS.live >= 32
        assert "not asked" in after["status_message"]

"""One tenant's hung libvirt, vSphere and Redfish calls hold at most its share of their
driver's helper threads, so another tenant's calls still find one; a quarter of the
helpers goes only to tenants with no call out, so two tenants within their shares cannot
hang them all; and a BMC that drips its answer is cut off at the conversation's
deadline, its helper freed.

Every remote is a real server on 127.0.0.1: a listener that accepts and stays silent
(libvirt), a TLS server that drips its answer (vCenter), a plain one that drips (BMC),
and libvirt's test driver, govmomi's simulator and the fake BMC for the tenant whose
calls must go through. Each pool is swapped for a small one built as the driver's is
(``Helpers`` with a per-owner share), so a handful of calls fills a tenant's share
instead of sixteen; the real pools' numbers are checked on their own.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from deskbroker.centers.base import CenterDriver, MachineInfo, PowerAction
from deskbroker.centers.libvirt import LibvirtCenter
from deskbroker.centers.libvirt import connection as libvirt_connection
from deskbroker.centers.openstack.overdue import (
    CLOUD_CALLS,
    MAX_PER_OWNER,
    Helpers,
    NoHelperLeft,
    Overdue,
)
from deskbroker.centers.static import redfish
from deskbroker.centers.vsphere import VsphereCenter
from deskbroker.centers.vsphere import connection as vsphere_connection
from deskbroker.domain.states import PowerState
from deskbroker.errors import CenterError
from deskbroker.security import SecretBox
from deskbroker.services.center_drivers import CenterDrivers
from deskbroker.store.tables import Center
from tests.centers.fake_bmc import FakeBMC
from tests.centers.libvirt_node import center_params
from tests.centers.vcsim import PASSWORD, running
from tests.helpers import wait_until
from tests.tarpit import HTTP_HEAD, drip, dripping, serving, tarpit

# A tenant's share in the small pools, and the pools' size: one place beyond the share,
# which the other tenant's call needs.
SHARE = 2
PLACES = SHARE + 1
# A refusal is made before any thread starts: far quicker than any call's deadline.
AT_ONCE_S = 0.15
# The driver cache opens a center's sealed secrets with the broker's key: this one.
BOX = SecretBox("the tests' key")


def _opened(
    tenant: str, name: str, kind: str, params: dict[str, Any], secrets: dict[str, str]
) -> Any:
    """A center's driver as the broker opens it: through its driver cache, which names
    the center's tenant to the driver."""
    center = Center(
        id=f"{tenant}-{name}",
        tenant_id=tenant,
        name=name,
        kind=kind,
        params=params,
        secrets_sealed=BOX.seal(json.dumps(secrets)) if secrets else None,
    )
    return CenterDrivers(BOX).get(center)


def _refused_at_once(call: Callable[[], object], said: str) -> None:
    started = time.monotonic()
    with pytest.raises(CenterError, match=said):
        call()
    assert time.monotonic() - started < AT_ONCE_S


def test_the_pools_give_each_tenant_the_same_share_as_the_clouds() -> None:
    for pool in (libvirt_connection.LIBVIRT_CALLS, vsphere_connection.VSPHERE_CALLS):
        assert pool.per_owner == MAX_PER_OWNER < pool.limit
    assert redfish.BMC_CALLS.per_owner == MAX_PER_OWNER < redfish.BMC_CALLS.limit
    # And each keeps a quarter for tenants with no call out: two tenants' shares of 32
    # (or four of 64) would fill the pool otherwise.
    pools = (
        libvirt_connection.LIBVIRT_CALLS,
        vsphere_connection.VSPHERE_CALLS,
        redfish.BMC_CALLS,
        CLOUD_CALLS,
    )
    assert [(p.limit, p.reserve) for p in pools] == [(32, 8), (32, 8), (32, 8), (64, 16)]


def test_one_tenants_silent_libvirt_hosts_leave_another_tenant_a_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant administrator's centers on a host that accepts and never answers: libvirt
    waits for its handshake for ever, so each call leaves a helper behind. Past the
    tenant's share its calls are refused at once, in words, and another tenant's libvirt
    call still finds a helper."""
    pool = Helpers(PLACES, SHARE, "libvirt hosts")
    monkeypatch.setattr(libvirt_connection, "LIBVIRT_CALLS", pool)
    opened: list[LibvirtCenter] = []
    with tarpit() as pit:
        for i in range(PLACES):
            uri = f"qemu+tcp://127.0.0.1:{pit.port}/host-{i}"  # one connection each
            params = {"uri": uri, "timeout_s": 0.2}
            opened.append(_opened("acme", f"silent-{i}", "libvirt", params, {}))
        for driver in opened[:SHARE]:
            with pytest.raises(CenterError, match=re.escape("did not answer within 0.2 s")):
                driver.inventory()
        assert (pool.live, pool.live_of("acme")) == (SHARE, SHARE)
        _refused_at_once(
            opened[SHARE].inventory,
            f"not asked, since {SHARE} calls to this tenant's libvirt hosts are still hanging",
        )
        other: LibvirtCenter = _opened("globex", "lab", "libvirt", center_params(tmp_path), {})
        opened.append(other)
        assert "hand-made" in {m.name for m in other.inventory()}
        assert pool.live_of("acme") == SHARE  # still hung: only the tenant's share
    # The listener closed: libvirt sees the end, the helpers end and give their places back.
    wait_until(lambda: not pool.live, "the abandoned libvirt calls to end")
    for driver in opened:
        driver.hypervisor.close()


def _silent_libvirt_calls(
    tenant: str, port: int, calls: int, opened: list[LibvirtCenter]
) -> list[LibvirtCenter]:
    """A tenant's libvirt centers on the silent host at ``port``, one per call: each
    call is given up on at its deadline and leaves its helper hanging."""
    drivers: list[LibvirtCenter] = []
    for i in range(calls):
        uri = f"qemu+tcp://127.0.0.1:{port}/{tenant}-{i}"  # one connection each
        params = {"uri": uri, "timeout_s": 0.2}
        drivers.append(_opened(tenant, f"silent-{i}", "libvirt", params, {}))
    opened.extend(drivers)
    return drivers


def test_without_a_reserve_two_tenants_silent_hosts_take_every_libvirt_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pools as they were (nothing in reserve): two tenant administrators, each
    within its share (2 of 4), hang every helper between them, and a third tenant's
    libvirt calls, to a host that answers, are not asked at all."""
    pool = Helpers(4, 2, "libvirt hosts", reserve=0)
    monkeypatch.setattr(libvirt_connection, "LIBVIRT_CALLS", pool)
    opened: list[LibvirtCenter] = []
    with tarpit() as pit:
        for tenant in ("acme", "initech"):
            for driver in _silent_libvirt_calls(tenant, pit.port, 2, opened):
                with pytest.raises(CenterError, match=re.escape("did not answer within 0.2 s")):
                    driver.inventory()
        assert pool.live == 4
        other: LibvirtCenter = _opened("globex", "lab", "libvirt", center_params(tmp_path), {})
        opened.append(other)
        _refused_at_once(other.inventory, "not asked, since 4 calls to libvirt hosts are")
    wait_until(lambda: not pool.live, "the abandoned libvirt calls to end")
    for driver in opened:
        driver.hypervisor.close()


def test_a_reserve_keeps_a_libvirt_helper_for_a_tenant_with_none_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quarter of the helpers (here one of four) goes only to a tenant with no call
    out: once three hang, the second tenant's next call is refused, in words its
    administrator reads, and the third tenant's libvirt call still finds a helper."""
    pool = Helpers(4, 2, "libvirt hosts")
    assert pool.reserve == 1
    monkeypatch.setattr(libvirt_connection, "LIBVIRT_CALLS", pool)
    opened: list[LibvirtCenter] = []
    with tarpit() as pit:
        for driver in _silent_libvirt_calls("acme", pit.port, 2, opened):
            with pytest.raises(CenterError, match=re.escape("did not answer within 0.2 s")):
                driver.inventory()
        first, second = _silent_libvirt_calls("initech", pit.port, 2, opened)
        with pytest.raises(CenterError, match=re.escape("did not answer within 0.2 s")):
            first.inventory()
        assert (pool.live, pool.live_of("acme"), pool.live_of("initech")) == (3, 2, 1)
        _refused_at_once(
            second.inventory,
            re.escape(
                "not asked, since 1 call to this tenant's libvirt hosts is still hanging, "
                "and the rest of the broker's helpers are kept for other tenants; "
                "the broker waits for them to end first"
            ),
        )
        other: LibvirtCenter = _opened("globex", "lab", "libvirt", center_params(tmp_path), {})
        opened.append(other)
        assert "hand-made" in {m.name for m in other.inventory()}
        assert pool.live == 3  # the third tenant's helper ended with its call
    wait_until(lambda: not pool.live, "the abandoned libvirt calls to end")
    for driver in opened:
        driver.hypervisor.close()


def test_the_reserve_goes_one_place_each_to_tenants_with_none_and_comes_back() -> None:
    """8 places, 4 a tenant, 2 in reserve, each call's work waiting on an event of its
    owner's (a call that hangs until the test lets it go): the two hogs hold 6 between
    them and are refused past that; a third tenant's blocking call runs, a fourth's and
    a fifth's too, a sixth finds every place taken; one tenant's call ending gives its
    place back to the reserve. The broker's own calls (no owner) keep to no reserve."""
    pool = Helpers(8, 4, "clouds")
    assert pool.reserve == 2
    gates: dict[str, threading.Event] = {}

    def hang(owner: str, calls: int) -> None:
        gate = gates.setdefault(owner, threading.Event())
        for _ in range(calls):
            with pytest.raises(Overdue):
                pool.run(gate.wait, 0.01, "cloud-call", owner)

    def refused(owner: str, said: str) -> None:
        with pytest.raises(NoHelperLeft, match=re.escape(said)):
            pool.run(lambda: "asked", 1.0, "cloud-call", owner)

    kept = "and the rest of the broker's helpers are kept for other tenants"
    try:
        hang("acme", 4)
        hang("initech", 2)
        refused("acme", "4 calls to this tenant's clouds are still hanging")
        refused("initech", f"2 calls to this tenant's clouds are still hanging, {kept}")
        # The third tenant's call waits on the cloud's answer, and gets it.
        asked, answer = threading.Event(), threading.Event()
        results: list[str] = []

        def call() -> str:
            asked.set()
            assert answer.wait(5)
            return "answered"

        caller = threading.Thread(
            target=lambda: results.append(pool.run(call, 5.0, "cloud-call", "globex"))
        )
        caller.start()
        assert asked.wait(5)
        assert (pool.live, pool.live_of("globex")) == (7, 1)
        refused("globex", f"1 call to this tenant's clouds is still hanging, {kept}")
        answer.set()
        caller.join(5)
        assert results == ["answered"]
        wait_until(lambda: pool.live == 6, "the third tenant's helper to end")
        hang("", 2)  # the broker's own: no reserve to keep to
        assert pool.live == 8
        refused("umbrella", "8 calls to clouds are still hanging")
        gates[""].set()
        wait_until(lambda: pool.live == 6, "the broker's own calls to end")
        hang("umbrella", 1)
        hang("hooli", 1)
        refused("wayne", "8 calls to clouds are still hanging")
        gates["umbrella"].set()
        wait_until(lambda: pool.live == 7, "the fourth tenant's call to end")
        refused("initech", kept)  # the place freed is the reserve's again
        assert pool.run(lambda: "answered", 1.0, "cloud-call", "wayne") == "answered"
    finally:
        for gate in gates.values():
            gate.set()
    wait_until(lambda: not pool.live, "every helper to end")


def _certificate() -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


@contextmanager
def tls_drip(tmp_path: Path, interval_s: float) -> Iterator[tuple[int, str]]:
    """The port and CA (PEM) of an HTTPS server that completes the TLS handshake, takes
    the request and drips its answer one byte per ``interval_s``, for ever: every read
    of the client succeeds within its timeout, the call never ends."""
    cert_pem, key_pem = _certificate()
    (tmp_path / "cert.pem").write_text(cert_pem)
    (tmp_path / "key.pem").write_text(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")

    def feed(conn: socket.socket, stopping: threading.Event) -> None:
        conn.settimeout(5)
        try:
            tls = context.wrap_socket(conn, server_side=True)
        except OSError:
            return  # the client gave up during the handshake
        with tls:
            tls.settimeout(0.05)
            with suppress(TimeoutError, OSError):
                tls.recv(65536)  # the request, never answered properly
            # Returns once the block ends; closing the TLS socket lets the client go.
            dripping(tls, stopping, HTTP_HEAD, b" ", interval_s)

    with serving(feed) as port:
        yield port, cert_pem


def test_one_tenants_dripping_vcenters_leave_another_tenant_a_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant administrator's centers on a server that drips its answer over TLS (each
    read beats the socket's timeout, the call never ends): past the tenant's share its
    calls are refused at once, and another tenant's vCenter call still finds a helper."""
    pool = Helpers(PLACES, SHARE, "vCenters")
    monkeypatch.setattr(vsphere_connection, "VSPHERE_CALLS", pool)
    opened: list[VsphereCenter] = []
    with tls_drip(tmp_path, interval_s=0.05) as (port, ca_pem), running("-vms", "1") as sim:
        for i in range(PLACES):
            # A user of its own each: one session each, not one waited for by the others.
            params = {"host": "127.0.0.1", "port": port, "username": f"user-{i}"}
            params.update(ca_pem=ca_pem, timeout_s=0.3)
            secrets = {"password": "p"}
            opened.append(_opened("acme", f"dripping-{i}", "vsphere", params, secrets))
        for driver in opened[:SHARE]:
            with pytest.raises(CenterError, match=re.escape("did not answer within 0.3 s")):
                driver.inventory()
        assert (pool.live, pool.live_of("acme")) == (SHARE, SHARE)
        _refused_at_once(
            opened[SHARE].inventory,
            f"not asked, since {SHARE} calls to this tenant's vCenters are still hanging",
        )
        other: VsphereCenter = _opened(
            "globex", "vcenter", "vsphere", sim.params(), {"password": PASSWORD}
        )
        opened.append(other)
        assert other.inventory()  # the simulator's VM
        assert pool.live_of("acme") == SHARE
    wait_until(lambda: not pool.live, "the abandoned vCenter calls to end")
    for driver in opened:
        driver.vcenter.close()


def test_a_silent_vcenter_lets_its_helper_go_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pyvmomi sets no read timeout (the login's version discovery none at all): the TLS
    context gives each socket the center's ``timeout_s``, so a vCenter that accepts and
    never answers holds the helper no longer than the call's own deadline, not until it
    closes the connection."""
    pool = Helpers(PLACES, SHARE, "vCenters")
    monkeypatch.setattr(vsphere_connection, "VSPHERE_CALLS", pool)
    with tarpit() as pit:
        params = {"host": "127.0.0.1", "port": pit.port, "username": "u", "timeout_s": 0.5}
        params["insecure"] = True
        driver: VsphereCenter = _opened("acme", "silent", "vsphere", params, {"password": "p"})
        with pytest.raises(CenterError, match=re.escape("did not answer within 0.5 s")):
            driver.inventory()
        started = time.monotonic()
        # The tarpit still holds the connection open: only the socket's timeout ends it.
        wait_until(lambda: not pool.live, "the silent vCenter's helper to end", timeout_s=5)
        assert time.monotonic() - started < 3
        driver.vcenter.close()


def _machine(name: str) -> MachineInfo:
    return MachineInfo(external_id=name, name=name)


def _static(
    tenant: str, url: str, names: list[str], timeout_s: float, password: str = "p"
) -> CenterDriver:
    """A tenant's static center whose machines' BMCs are at ``url``, as the broker opens
    it (its tenant named), with the BMC password among its secrets."""
    redfish_config = {"url": url, "username": "operator", "timeout_s": timeout_s}
    machines = [{"name": name, "address": "10.0.0.5", "redfish": redfish_config} for name in names]
    secrets = {"redfish_password": password}
    driver: CenterDriver = _opened(tenant, "lab", "static", {"machines": machines}, secrets)
    return driver


def test_a_bmc_that_drips_is_cut_off_at_the_deadline_and_its_helper_freed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One byte every 0.1 s beats the 1 s read timeout for ever; the conversation's
    deadline closes the connection, so the helper ends with the call, not with the BMC."""
    pool = Helpers(PLACES, SHARE, "BMCs")
    monkeypatch.setattr(redfish, "BMC_CALLS", pool)
    with drip(HTTP_HEAD, interval_s=0.1) as port:
        driver = _static("acme", f"http://127.0.0.1:{port}", ["m"], timeout_s=1)
        started = time.monotonic()
        with pytest.raises(CenterError, match="no answer within 1 s"):
            driver.power(_machine("m"), PowerAction.START)
        assert time.monotonic() - started < 2
        # The BMC still drips: only the deadline can have ended the helper.
        wait_until(lambda: not pool.live, "the helper to end at the deadline", timeout_s=1)
        assert driver.inventory()[0].power_state is PowerState.UNKNOWN  # cut off again
        wait_until(lambda: not pool.live, "the helper to end at the deadline", timeout_s=1)


def test_one_tenants_dripping_bmcs_leave_another_tenant_a_helper(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a tenant's conversations with dripping BMCs run to their deadline, its
    further ones are refused at once, in words, and another tenant's BMC is still asked."""
    pool = Helpers(PLACES, SHARE, "BMCs")
    monkeypatch.setattr(redfish, "BMC_CALLS", pool)
    bmc = FakeBMC().start()
    failures: list[BaseException] = []

    def start(driver: CenterDriver, name: str) -> None:
        try:
            driver.power(_machine(name), PowerAction.START)
        except CenterError as exc:
            failures.append(exc)

    try:
        with drip(HTTP_HEAD, interval_s=0.1) as port:
            names = [f"m{i}" for i in range(PLACES)]
            acme = _static("acme", f"http://127.0.0.1:{port}", names, timeout_s=2)
            running_calls = [
                threading.Thread(target=start, args=(acme, name), daemon=True)
                for name in names[:SHARE]
            ]
            for thread in running_calls:
                thread.start()
            wait_until(lambda: pool.live_of("acme") == SHARE, "the tenant's share to fill")
            _refused_at_once(
                lambda: acme.power(_machine(names[SHARE]), PowerAction.START),
                f"not asked, since {SHARE} calls to this tenant's BMCs are still hanging",
            )
            globex = _static("globex", bmc.url, ["lab-1"], timeout_s=2, password=bmc.password)
            globex.power(_machine("lab-1"), PowerAction.START)
            assert bmc.resets == ["On"]
            for thread in running_calls:
                thread.join(timeout=10)
        assert len(failures) == SHARE
        assert all("no answer within 2 s" in str(f) for f in failures), failures
        wait_until(lambda: not pool.live, "the helpers to end at their deadline", timeout_s=1)
    finally:
        bmc.stop()


def test_a_tenants_centers_scanned_at_once_leave_unasked_machines_as_they_were(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three static centers of one tenant, 8 healthy BMCs each, listed at once: each
    listing asks 8 at a time and the tenant's share is 16, so some BMCs are not asked.
    Their machines are no news (partial: the scan keeps what it knew), never ``unknown``,
    which would flip desktops whose BMCs answer well."""
    # The real sizes, in a pool of this test's own (no other test's calls in it).
    monkeypatch.setattr(redfish, "BMC_CALLS", Helpers(32, MAX_PER_OWNER, "BMCs"))
    bmc = FakeBMC(power_state="On", latency_s=0.5).start()
    try:
        config = {"url": bmc.url, "username": "operator", "timeout_s": 20}
        drivers = [
            _opened(
                "acme",
                f"lab{c}",
                "static",
                {
                    "machines": [
                        {"name": f"c{c}-m{i}", "address": "10.0.0.5", "redfish": config}
                        for i in range(8)
                    ]
                },
                {"redfish_password": bmc.password},
            )
            for c in range(3)
        ]
        listed: dict[int, list[MachineInfo]] = {}

        def scan(c: int) -> None:
            listed[c] = drivers[c].inventory()

        threads = [threading.Thread(target=scan, args=(c,)) for c in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        machines = [m for c in range(3) for m in listed[c]]
        assert len(machines) == 24
        asked = [m for m in machines if not m.partial]
        assert all(m.power_state is PowerState.RUNNING for m in asked), [
            (m.name, m.power_state) for m in asked
        ]
        # Not every BMC could be asked at once (the share is 16 of the 24): the others
        # are seen, with nothing to say.
        assert 16 <= len(asked) < 24, len(asked)
        assert all(m.power_state is PowerState.UNKNOWN for m in machines if m.partial)
    finally:
        bmc.stop()

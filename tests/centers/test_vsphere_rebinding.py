"""The vSphere driver connects to the address it checked against the outbound policy, not
to whatever vCenter's name resolves to a moment later (DNS rebinding), and still
verifies vCenter's certificate for the name in the params. govmomi's simulator serves a
certificate for ``localhost`` and 127.0.0.1; name resolution is the faked boundary."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deskbroker import outbound
from deskbroker.centers.vsphere.connection import Vcenter
from deskbroker.centers.vsphere.params import VsphereParams
from deskbroker.errors import CenterError
from deskbroker.outbound import OutboundPolicy
from tests.centers.vcsim import PASSWORD, Vcsim, running
from tests.rebinding import resolver


@pytest.fixture(scope="module")
def sim() -> Iterator[Vcsim]:
    with running("-vms", "1", "-templates", "0", "-datastores", "1") as simulator:
        yield simulator


def _vcenter(sim: Vcsim, host: str) -> Vcenter:
    return Vcenter(VsphereParams.model_validate(sim.params(host=host)), {"password": PASSWORD})


def test_the_checked_address_is_the_one_connected_to(
    sim: Vcsim, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the simulator's address is allowed; the rest of loopback stands for a denied
    # internal service the name rebinds to after the check.
    outbound.install(OutboundPolicy.from_text("127.0.0.1/32", "127.0.0.0/8"))
    looked = resolver(monkeypatch, "localhost", ["127.0.0.1", "127.0.0.2"])
    vcenter = _vcenter(sim, "localhost")
    try:
        about = vcenter.call(lambda si: si.content.about.apiType, "about")
    finally:
        vcenter.close()
    assert about == "VirtualCenter"
    assert looked == ["localhost"]  # once, by the check: pyvmomi never resolved it again


def test_the_certificate_is_still_verified_for_the_name(
    sim: Vcsim, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The name resolves to the simulator, whose certificate is for localhost and
    # 127.0.0.1, not for this name: verified against the name, it is refused.
    resolver(monkeypatch, "vcenter.example.org", ["127.0.0.1"])
    vcenter = _vcenter(sim, "vcenter.example.org")
    try:
        with pytest.raises(CenterError, match="TLS verification failed"):
            vcenter.call(lambda si: si.content.about.apiType, "about")
    finally:
        vcenter.close()

"""A libvirt center over ``+tcp`` connects to the address the broker checked
against the outbound policy, not to whatever the host's name resolves to when libvirt
looks it up again (DNS rebinding). Name resolution is the faked boundary: the name is one
the system resolver cannot resolve (``.invalid``), so libvirt reaches the listener only
if the broker handed it the checked address."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from deskbroker import outbound
from deskbroker.centers.libvirt.connection import Hypervisor
from deskbroker.centers.libvirt.params import LibvirtParams
from deskbroker.errors import CenterError
from deskbroker.outbound import OutboundPolicy, OutboundRefused
from tests.rebinding import Trap, resolver

NAME = "kvm.deskbroker.invalid"


@pytest.fixture
def listener() -> Iterator[Trap]:
    found = Trap()
    yield found
    found.close()


def _hypervisor(uri: str, **more: Any) -> Hypervisor:
    params = LibvirtParams.model_validate({"uri": uri, "timeout_s": 10, **more})
    return Hypervisor(params, {"password": "pw"} if more.get("username") else {})


def test_libvirt_connects_to_the_checked_address(
    listener: Trap, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbound.install(OutboundPolicy.from_text("127.0.0.1/32", "127.0.0.0/8"))
    looked = resolver(monkeypatch, NAME, ["127.0.0.1"])
    hypervisor = _hypervisor(f"qemu+tcp://{NAME}:{listener.port}/system")
    try:
        # The listener is no libvirtd: the handshake fails, after the connection came.
        with pytest.raises(CenterError):
            hypervisor.call(lambda conn: conn.getVersion(), "version")
    finally:
        hypervisor.close()
    assert looked == [NAME]
    assert listener.accepted >= 1


def test_a_denied_address_is_refused_before_libvirt_connects(
    listener: Trap, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbound.install(OutboundPolicy.from_text("127.0.0.1/32", "127.0.0.0/8"))
    resolver(monkeypatch, NAME, ["127.0.0.2"])
    hypervisor = _hypervisor(f"qemu+tcp://{NAME}:{listener.port}/system")
    try:
        with pytest.raises(OutboundRefused):
            hypervisor.call(lambda conn: conn.getVersion(), "version")
    finally:
        hypervisor.close()
    assert listener.accepted == 0


def test_sasl_credentials_do_not_keep_the_name() -> None:
    """libvirt uses SASL credentials only when the host asks for them: a tenant admin who
    sets a user name must not get the name resolved again by libvirt."""
    sasl = _hypervisor(f"qemu+tcp://{NAME}/system", username="tenant-b")
    assert sasl._uri_to_open(["192.0.2.7"]) == "qemu+tcp://192.0.2.7/system"
    named = _hypervisor(f"qemu+tcp://ann@{NAME}/system")
    assert named._uri_to_open(["192.0.2.7"]) == "qemu+tcp://ann@192.0.2.7/system"
    plain = _hypervisor(f"qemu+tcp://{NAME}:16510/system")
    assert plain._uri_to_open(["2001:db8::7"]) == "qemu+tcp://[2001:db8::7]:16510/system"
    literal = _hypervisor("qemu+tcp://192.0.2.8/system")
    assert literal._uri_to_open(["192.0.2.8"]) == "qemu+tcp://192.0.2.8/system"

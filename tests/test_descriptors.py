"""Descriptors never carry what a center or directory could smuggle into their lines."""

from __future__ import annotations

import pytest

from deskbroker.errors import Conflict
from deskbroker.protocols.descriptors import PlanEntry, Protocol, build, usable_host


@pytest.mark.parametrize(
    "address",
    ["10.0.0.5", "fe80::1", "desk-01.corp.example", "localhost", "desk01."],
)
def test_real_addresses_are_usable(address: str) -> None:
    assert usable_host(address)


@pytest.mark.parametrize(
    "address",
    ["", "10.0.0.5\nalternate shell:s:cmd", "host name", 'a"b', "-bad.example", "x" * 300],
)
def test_an_address_that_could_break_a_file_is_refused(address: str) -> None:
    assert not usable_host(address)
    with pytest.raises(Conflict, match="has no usable address"):
        build(
            Protocol.RDP,
            PlanEntry(Protocol.RDP),
            desktop_name="desk\r\n1",
            address=address,
            desktop_ports={},
            username="alice",
        )


def test_a_username_with_line_breaks_stays_on_its_line() -> None:
    rdp = build(
        Protocol.RDP,
        PlanEntry(Protocol.RDP),
        desktop_name="desk-1",
        address="10.0.0.5",
        desktop_ports={},
        username="alice\r\nalternate shell:s:cmd.exe",
    )
    lines = rdp.content.splitlines()
    assert "username:s:alicealternate shell:s:cmd.exe" in lines
    assert not any(line.startswith("alternate shell") for line in lines)
    assert rdp.host == "10.0.0.5" and rdp.port == 3389

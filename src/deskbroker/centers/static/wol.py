"""Wake-on-LAN: the magic packet that powers a sleeping or soft-off machine on.

Six 0xFF bytes, then the machine's MAC address sixteen times, in one UDP datagram to a
broadcast address (the machine has no address of its own while it is off). The network
must carry it there: a directed broadcast to the machine's subnet crosses routers only
where they allow it.
"""

from __future__ import annotations

import re
import socket

from deskbroker import outbound

# aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff or aabbccddeeff (pydantic's regex has no
# backreferences, so the three forms are spelled out).
MAC = (
    r"^(?:[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){5}"
    r"|[0-9A-Fa-f]{12})$"
)


def mac_bytes(mac: str) -> bytes:
    """The six bytes of a MAC written as aa:bb:cc:dd:ee:ff, aa-bb-..., or aabbccddeeff."""
    if not re.fullmatch(MAC, mac):
        raise ValueError(f"{mac!r} is not a MAC address")
    return bytes.fromhex(re.sub(r"[:-]", "", mac))


def magic_packet(mac: str) -> bytes:
    """The 102-byte magic packet that wakes ``mac``."""
    return b"\xff" * 6 + mac_bytes(mac) * 16


def wake(mac: str, broadcast: str, port: int, what: str) -> None:
    """Send the magic packet for ``mac`` to ``broadcast``:``port``; the outbound policy
    decides whether that address may be sent to. Raises ``OSError`` when the network
    refuses the datagram, ``OutboundRefused`` when the policy does."""
    outbound.current().check_address(broadcast, what)
    family = socket.AF_INET6 if ":" in broadcast else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.sendto(magic_packet(mac), (broadcast, port))

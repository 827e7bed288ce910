"""Where the broker may connect on an administrator's say-so: the outbound network policy.

Administrators configure URLs and hosts the broker then connects to: a center's Keystone
and the endpoints its catalog names, LDAP and NIS servers, an OpenID provider and the
endpoints its discovery document names. Without a policy a tenant admin could aim the
broker at its own host (loopback services, the cloud metadata service at 169.254.169.254)
and read what comes back (server-side request forgery).

The policy is two lists of networks from the settings: ``outbound_deny`` (by default
loopback, link-local, the unspecified address and the cloud metadata services outside
link-local) and ``outbound_allow``. The most
specific network that holds an address decides; a tie goes to ``allow``, so
``outbound_allow=127.0.0.0/8`` opens loopback again (the demo and the tests do) and
``outbound_deny=0.0.0.0/0,::/0`` with ``outbound_allow=10.0.0.0/8`` permits only one
network. Addresses no list names are allowed.

It is checked twice: when an administrator saves a URL (an address written in it, or a
name of the local host, is refused with a message) and on every connection, against the
address the socket actually reached (a name may resolve anywhere later, or differently
each time). The connection-time guards plug into requests (openstacksdk), httpx (OpenID)
and plain sockets (LDAP, NIS).

The policy in force is the process's: ``BrokerContext.from_settings`` installs it, and
drivers ask ``current()`` when they connect.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from deskbroker.errors import DeskbrokerError, InvalidInput

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Loopback, link-local (the cloud metadata service lives there) and "this host".
# Loopback, link-local (the usual metadata service, 169.254.169.254), the unspecified
# address, and the metadata services that live elsewhere: AWS's IPv6 one (fd00:ec2::254)
# and Alibaba Cloud's (100.100.100.200).
DEFAULT_DENY = (
    "127.0.0.0/8,::1/128,169.254.0.0/16,fe80::/10,0.0.0.0/8,::/128,"
    "fd00:ec2::254/128,100.100.100.200/32"
)
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class OutboundRefused(DeskbrokerError):
    """A connection the outbound network policy does not permit."""

    status = 502
    title = "Outbound connection refused"


def parse_networks(text: str, setting: str) -> tuple[Network, ...]:
    """Comma-separated CIDRs (or single addresses) of a setting; a clear error otherwise."""
    found: list[Network] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            found.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ValueError(
                f"{setting}: {item!r} is not a network such as 10.0.0.0/8 or fd00::/8"
            ) from exc
    return tuple(found)


def _address(text: str) -> Address:
    address = ipaddress.ip_address(text.split("%", 1)[0])  # a v6 scope id names no network
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return address


def _most_specific(address: Address, networks: Iterable[Network]) -> Network | None:
    best: Network | None = None
    for network in networks:
        inside = address.version == network.version and address in network
        if inside and (best is None or network.prefixlen > best.prefixlen):
            best = network
    return best


@dataclass(frozen=True)
class OutboundPolicy:
    """Which networks the broker may connect to on an administrator's configuration."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = parse_networks(DEFAULT_DENY, "outbound_deny")

    @classmethod
    def from_text(cls, allow: str, deny: str) -> OutboundPolicy:
        return cls(
            allow=parse_networks(allow, "outbound_allow"),
            deny=parse_networks(deny, "outbound_deny"),
        )

    def refusal(self, address: str) -> str | None:
        """Why ``address`` is refused, or ``None`` when the broker may connect to it."""
        ip = _address(address)
        denied = _most_specific(ip, self.deny)
        if denied is None:
            return None
        allowed = _most_specific(ip, self.allow)
        if allowed is not None and allowed.prefixlen >= denied.prefixlen:
            return None
        return (
            f"{ip} is in {denied}, which the broker's outbound policy denies "
            "(settings outbound_deny and outbound_allow)"
        )

    def check_address(self, address: str, what: str) -> None:
        """At connection time: refuse an address the policy denies."""
        reason = self.refusal(address)
        if reason is not None:
            raise OutboundRefused(f"{what}: {reason}")

    def check_host(self, host: str, what: str) -> None:
        """At save time: refuse a host written as a denied address or naming this host.

        Other names are checked when the broker connects, since they may not resolve
        yet and may resolve differently then."""
        reason = self.host_refusal(host)
        if reason is not None:
            raise InvalidInput(f"{what}: {host} is refused: {reason}")

    def host_refusal(self, host: str) -> str | None:
        """Why a host written as an address (or naming this host) is refused; ``None``
        when it is allowed or is a name, known only once resolved. No name lookup."""
        bare = host.strip("[]").rstrip(".").lower()
        if bare in _LOCAL_NAMES or bare.endswith(".localhost"):
            numeric = "127.0.0.1"
        else:
            numeric = _numeric(bare) or ""
        return self.refusal(numeric) if numeric else None

    def check_socket(self, sock: socket.socket, what: str) -> None:
        """At connection time: the address a connected socket reached; closes it when
        refused, before a byte is sent."""
        peer: Any = sock.getpeername()
        address = str(peer[0]) if isinstance(peer, tuple) else ""
        if not address:
            return  # a Unix socket: no network
        try:
            self.check_address(address, what)
        except OutboundRefused:
            sock.close()
            raise


@dataclass(frozen=True)
class Target:
    """A host a driver's parameters make the broker connect to: ``param`` names where it
    was written, ``value`` is as written (a URL, or host:port).

    ``carries_secret`` says whether the center's or source's stored secrets are sent to
    it, so that changing it drops them (``services/outbound_params.py``). A static
    machine's address is checked by the policy but is given none of the center's
    secrets (its BMC passwords go to the BMC's URL), so it is ``False`` there."""

    param: str
    value: str
    host: str
    carries_secret: bool = True

    @classmethod
    def url(cls, param: str, url: str) -> Target:
        return cls(param, url, urlsplit(url).hostname or "")


def targets_of(params: object) -> list[Target]:
    """The hosts a validated params model connects to (its ``outbound_targets()``)."""
    found = getattr(params, "outbound_targets", None)
    return list(found()) if callable(found) else []


def host_side_of(params: object) -> list[str]:
    """The params of a validated model, set to a value, that read the broker host's own
    files or credentials (its ``host_side_params``): only a global admin sets them."""
    names: frozenset[str] = getattr(type(params), "host_side_params", frozenset())
    return sorted(name for name in names if getattr(params, name, None))


def _numeric(host: str) -> str | None:
    """The address a host written as a number stands for (127.1, 0x7f000001, ::1), with no
    name lookup; ``None`` for a name."""
    try:
        infos = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        return None
    return str(infos[0][4][0]) if infos else None


_lock = threading.Lock()
_current = OutboundPolicy()


def install(policy: OutboundPolicy) -> None:
    """Make ``policy`` the process's (the broker's settings do, once per context)."""
    global _current
    with _lock:
        _current = policy


def current() -> OutboundPolicy:
    """The policy in force; the default denies loopback and link-local."""
    return _current

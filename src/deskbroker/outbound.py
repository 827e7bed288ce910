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

The addresses of the host's own network interfaces (its LAN address, a container bridge)
are denied too, whatever the lists say, as if each were a deny entry of its own full
length: only an ``outbound_allow`` entry naming that very address (``10.0.0.5/32``) opens
one, so allowing the desktops' network (``10.0.0.0/8``) does not open the broker's host
in it. Loopback is left to the lists, as before. They are read from the kernel (every
interface's addresses on Linux, and everywhere the address the host's routes answer
from), at start and again at most every ``HOST_ADDRESSES_TTL_S``; a connection that
comes back to the address it left from is refused as well, for one added meanwhile.

It is checked twice: when an administrator saves a URL (an address written in it, or a
name of the local host, is refused with a message) and on every connection, against the
address the socket actually reached (a name may resolve anywhere later, or differently
each time). The connection-time guards plug into requests (openstacksdk), httpx (OpenID)
and plain sockets (LDAP, NIS).

The policy in force is the process's: ``BrokerContext.from_settings`` installs it, and
drivers ask ``current()`` when they connect.
"""

from __future__ import annotations

import array
import ipaddress
import logging
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from deskbroker.errors import DeskbrokerError, InvalidInput

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

log = logging.getLogger("deskbroker.outbound")

# Loopback, link-local (the usual metadata service, 169.254.169.254), the unspecified
# address, and the metadata services that live elsewhere: AWS's IPv6 one (fd00:ec2::254),
# Alibaba Cloud's (100.100.100.200) and Azure's WireServer (168.63.129.16, which hands a
# VM its extensions' settings and certificates).
DEFAULT_DENY = (
    "127.0.0.0/8,::1/128,169.254.0.0/16,fe80::/10,0.0.0.0/8,::/128,"
    "fd00:ec2::254/128,100.100.100.200/32,168.63.129.16/32"
)
# How long the host's own addresses, once read, are trusted (seconds): an interface that
# comes up later (a container bridge, a renumbered LAN) is denied within this, and no
# connection pays more than a few system calls for it.
HOST_ADDRESSES_TTL_S = 60.0
# Who "the host" is in a refusal: the broker's, unless the process says otherwise.
BROKER_HOST = "the broker's own host"
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
    """Which networks the broker may connect to on an administrator's configuration.

    ``host``: the host's own addresses, refused unless an allow entry names exactly one;
    ``None`` (the processes' policies) reads this host's (``host_addresses``), a test
    gives a list. ``host_words`` names that host in a refusal."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = parse_networks(DEFAULT_DENY, "outbound_deny")
    host: frozenset[Address] | None = None
    host_words: str = BROKER_HOST

    @classmethod
    def from_text(
        cls,
        allow: str,
        deny: str,
        *,
        host: frozenset[Address] | None = None,
        host_words: str = BROKER_HOST,
    ) -> OutboundPolicy:
        return cls(
            allow=parse_networks(allow, "outbound_allow"),
            deny=parse_networks(deny, "outbound_deny"),
            host=host,
            host_words=host_words,
        )

    def host_addresses(self) -> frozenset[Address]:
        """The addresses this policy takes for the host's own."""
        return host_addresses() if self.host is None else self.host

    def _allowed_exactly(self, ip: Address) -> bool:
        """Whether an allow entry names ``ip`` itself (a /32 or /128): the only way to
        open one of the host's own addresses."""
        allowed = _most_specific(ip, self.allow)
        return allowed is not None and allowed.prefixlen == ip.max_prefixlen

    def _own_host(self, ip: Address) -> str | None:
        # Loopback stays with the lists (outbound_allow=127.0.0.0/8 opens it, as before).
        if ip.is_loopback or self._allowed_exactly(ip):
            return None
        return (
            f"{ip} is an address of {self.host_words} (one of its network interfaces), "
            "which the outbound policy denies; only an outbound_allow entry of exactly "
            "this address opens it"
        )

    def refusal(self, address: str) -> str | None:
        """Why ``address`` is refused, or ``None`` when the broker may connect to it."""
        ip = _address(address)
        if ip in self.host_addresses():
            reason = self._own_host(ip)
            if reason is not None:
                return reason
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

    def connection_refusal(self, peer: str, local: str) -> str | None:
        """Why a connection from ``local`` to ``peer`` is refused: one that came back to
        the host it left from (its peer is its own local address), unless that is
        loopback or allowed exactly. The second line behind ``refusal``: it holds for an
        address the host took after its addresses were last read."""
        ip = _address(peer)
        if ip != _address(local):
            return None
        reason = self._own_host(ip)
        if reason is None:
            return None
        return f"the connection came back to the address it left from: {reason}"

    def check_socket(self, sock: socket.socket, what: str) -> None:
        """At connection time: the address a connected socket reached, and whether it
        came back to its own host; closes it when refused, before a byte is sent."""
        peer: Any = sock.getpeername()
        address = str(peer[0]) if isinstance(peer, tuple) else ""
        if not address:
            return  # a Unix socket: no network
        try:
            self.check_address(address, what)
            reason = self.connection_refusal(address, str(sock.getsockname()[0]))
            if reason is not None:
                raise OutboundRefused(f"{what}: {reason}")
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


# The source address of a UDP socket "connected" to these is the one the host's routes
# answer from (connecting a UDP socket sends nothing); documentation addresses, so no
# real host is ever named.
_ROUTE_PROBES = ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1"))
# Linux's ioctl listing every interface's IPv4 addresses, aliases included.
_SIOCGIFCONF = 0x8912
# struct ifreq: a 16-byte name, then a union whose largest member is struct ifmap.
_IFREQ = 16 + struct.calcsize("PPHBBB0P")


def _route_sources() -> set[str]:
    """The addresses the host answers from by its routes (portable, but only those)."""
    found: set[str] = set()
    for family, far in _ROUTE_PROBES:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect((far, 9))
                found.add(str(sock.getsockname()[0]))
        except OSError:
            continue  # no route of that family (an IPv4-only host)
    return found


def _interface_ipv4() -> set[str]:
    """Every IPv4 address of every interface (SIOCGIFCONF; Linux's layout of ifreq)."""
    import fcntl  # Unix only; this runs on Linux only

    slots = 64
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while True:
            names = array.array("B", bytes(_IFREQ * slots))
            ifconf = struct.pack("iP", len(names), names.buffer_info()[0])
            used = int(struct.unpack("iP", fcntl.ioctl(sock.fileno(), _SIOCGIFCONF, ifconf))[0])
            # A full buffer may have cut the list short: ask again with room to spare.
            if used <= len(names) - _IFREQ or slots >= 16384:
                break
            slots *= 4
    data = names.tobytes()
    # Each entry's struct sockaddr_in: family (2 bytes), port (2), then the address.
    return {socket.inet_ntoa(data[at + 20 : at + 24]) for at in range(0, used, _IFREQ)}


def _interface_ipv6() -> set[str]:
    """Every IPv6 address of every interface, as Linux lists them."""
    with open("/proc/net/if_inet6", encoding="ascii") as listing:
        rows = [line.split() for line in listing]
    return {str(ipaddress.IPv6Address(bytes.fromhex(row[0]))) for row in rows if row}


def discover_host_addresses() -> frozenset[Address]:
    """This host's own addresses but loopback, read from the kernel now: the routes'
    source addresses everywhere, and on Linux every interface's. No name is looked up
    (the host's name may resolve through a DNS server, slowly, or to another host)."""
    texts = _route_sources()
    if sys.platform.startswith("linux"):
        for reader in (_interface_ipv4, _interface_ipv6):
            try:
                texts |= reader()
            except (OSError, ValueError) as exc:  # a sandbox without /proc, say
                log.warning("the host's own addresses: %s failed: %s", reader.__name__, exc)
    found: set[Address] = set()
    for text in texts:
        try:
            ip = _address(text)
        except ValueError:
            continue
        if not ip.is_loopback and not ip.is_unspecified:
            found.add(ip)
    return frozenset(found)


_host_lock = threading.Lock()
_host: tuple[float, frozenset[Address]] | None = None


def host_addresses() -> frozenset[Address]:
    """This host's own addresses but loopback, read again once ``HOST_ADDRESSES_TTL_S``
    has passed since the last reading (``install`` reads them at start)."""
    global _host
    with _host_lock:
        now = time.monotonic()
        if _host is None or now - _host[0] > HOST_ADDRESSES_TTL_S:
            _host = (now, discover_host_addresses())
        return _host[1]


_lock = threading.Lock()
_current = OutboundPolicy()


def install(policy: OutboundPolicy) -> None:
    """Make ``policy`` the process's (the broker's settings do, once per context), and
    read the host's addresses now, at start, rather than in a first request."""
    global _current
    if policy.host is None:
        host_addresses()
    with _lock:
        _current = policy


def current() -> OutboundPolicy:
    """The policy in force; the default denies loopback and link-local."""
    return _current

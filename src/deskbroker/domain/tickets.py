"""Tickets: short-lived, single-use, signed grants for one connection through the gateway.

The broker mints a ticket when a user connects through the gateway; the gateway checks it
with nothing but the shared gateway key (no database), then remembers its id until it
expires so that it opens one connection only. A ticket names everything the gateway needs
and may do: the user, the desktop, the protocol, the target address and port, the gateway
it is meant for and (for port forwards) the client address allowed to use it.

Format: ``base64url(JSON claims) "." base64url(HMAC-SHA256(key, first part))``. The key
is derived from the operator's ``gateway_key`` with a label of its own, so the same secret
never signs two kinds of things (user tokens are signed with a different key entirely).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass
from typing import Any

from deskbroker.errors import Forbidden

TICKET_VERSION = 1
DEFAULT_TTL_S = 60
# A ticket is a few hundred bytes (an SSH ticket's host keys add up to a few KiB);
# anything much longer is not one of ours.
MAX_TICKET_CHARS = 12288
# Clocks of the broker and the gateway may differ this much.
CLOCK_SKEW_S = 5


class TicketRefused(Forbidden):
    """A ticket the gateway will not honour: forged, expired, replayed or aimed elsewhere."""

    title = "Ticket refused"


@dataclass(frozen=True)
class Ticket:
    """What a verified ticket grants: one connection to ``host:port`` with ``protocol``."""

    ticket_id: str
    user_id: str
    username: str
    tenant_id: str
    desktop_id: str
    desktop_name: str
    protocol: str
    host: str
    port: int
    gateway_id: str
    issued_at: int
    expires_at: int
    # The address the broker saw the client at: a port forward only accepts a connection
    # from there (empty: any address, for clients behind address-changing proxies).
    client: str = ""
    # An SSH ticket: the desktop's host keys (OpenSSH public key lines) the gateway's SSH
    # client accepts; empty with ``learn_host_key`` false, the gateway's own known_hosts.
    host_keys: tuple[str, ...] = ()
    # No key is known and the broker learns the first one the gateway sees (reported back).
    learn_host_key: bool = False


def _key(secret: str, label: str) -> bytes:
    return hashlib.sha256(f"{label}:{secret}".encode()).digest()


def ticket_key(secret: str) -> bytes:
    """The key tickets are signed with, derived from the shared gateway key."""
    return _key(secret, "deskbroker-ticket")


def report_key(secret: str) -> bytes:
    """The key a gateway signs its reports to the broker with (its own credential)."""
    return _key(secret, "deskbroker-gateway-report")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(key: bytes, payload: bytes) -> str:
    """HMAC-SHA256 of ``payload``, base64url without padding."""
    return _b64(hmac.new(key, payload, hashlib.sha256).digest())


def mint(
    secret: str,
    *,
    now: int,
    ttl_s: int = DEFAULT_TTL_S,
    user_id: str,
    username: str,
    tenant_id: str,
    desktop_id: str,
    desktop_name: str,
    protocol: str,
    host: str,
    port: int,
    gateway_id: str,
    client: str = "",
    host_keys: tuple[str, ...] = (),
    learn_host_key: bool = False,
) -> tuple[str, Ticket]:
    """A new ticket (its text and what it says), valid from ``now`` for ``ttl_s`` seconds."""
    ticket = Ticket(
        ticket_id=secrets.token_urlsafe(16),
        user_id=user_id,
        username=username,
        tenant_id=tenant_id,
        desktop_id=desktop_id,
        desktop_name=desktop_name,
        protocol=protocol,
        host=host,
        port=port,
        gateway_id=gateway_id,
        issued_at=now,
        expires_at=now + ttl_s,
        client=client,
        host_keys=tuple(host_keys),
        learn_host_key=learn_host_key,
    )
    claims = {"v": TICKET_VERSION, **asdict(ticket)}
    body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{sign(ticket_key(secret), body.encode())}", ticket


def _field(claims: dict[str, Any], name: str, kind: type) -> Any:
    value = claims.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TicketRefused(f"the ticket's {name} is missing or malformed")
    return value


def _host_keys(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise TicketRefused("the ticket's host_keys are malformed")
    return tuple(value)


def verify(text: str, secret: str, *, now: int, gateway_id: str) -> Ticket:
    """The ticket's grant if its signature, lifetime and gateway are right; else refused.

    Replay is the caller's business (``ReplayGuard``): this function holds no state."""
    if not text or len(text) > MAX_TICKET_CHARS or text.count(".") != 1:
        raise TicketRefused("this is not a gateway ticket")
    body, signature = text.split(".")
    expected = sign(ticket_key(secret), body.encode())
    if not hmac.compare_digest(expected, signature):
        raise TicketRefused("the ticket's signature is wrong: it was not issued by the broker")
    try:
        claims = json.loads(_unb64(body))
    except (ValueError, binascii.Error) as exc:
        raise TicketRefused("the ticket cannot be read") from exc
    if not isinstance(claims, dict) or claims.get("v") != TICKET_VERSION:
        raise TicketRefused("the ticket's version is not understood by this gateway")
    ticket = Ticket(
        ticket_id=_field(claims, "ticket_id", str),
        user_id=_field(claims, "user_id", str),
        username=_field(claims, "username", str),
        tenant_id=_field(claims, "tenant_id", str),
        desktop_id=_field(claims, "desktop_id", str),
        desktop_name=_field(claims, "desktop_name", str),
        protocol=_field(claims, "protocol", str),
        host=_field(claims, "host", str),
        port=_field(claims, "port", int),
        gateway_id=_field(claims, "gateway_id", str),
        issued_at=_field(claims, "issued_at", int),
        expires_at=_field(claims, "expires_at", int),
        client=_field(claims, "client", str),
        host_keys=_host_keys(claims.get("host_keys", [])),
        learn_host_key=claims.get("learn_host_key", False) is True,
    )
    if now > ticket.expires_at:
        raise TicketRefused(
            f"the ticket expired {now - ticket.expires_at} s ago; connect again from the portal"
        )
    if ticket.issued_at > now + CLOCK_SKEW_S:
        raise TicketRefused(
            "the ticket is not valid yet (are the clocks of broker and gateway set?)"
        )
    if ticket.gateway_id != gateway_id:
        raise TicketRefused("the ticket was issued for another gateway")
    return ticket


class ReplayGuard:
    """Ticket ids already used, each kept until its ticket expires: a ticket opens one
    connection. Pure bookkeeping; the gateway holds one per process."""

    def __init__(self) -> None:
        self._used: dict[str, int] = {}

    def consume(self, ticket: Ticket, *, now: int) -> None:
        """Mark the ticket used; refused if it was used before."""
        if len(self._used) > 1024:
            self._used = {k: exp for k, exp in self._used.items() if exp >= now - CLOCK_SKEW_S}
        if ticket.ticket_id in self._used:
            raise TicketRefused("the ticket was used already; connect again from the portal")
        self._used[ticket.ticket_id] = ticket.expires_at

    def __len__(self) -> int:
        return len(self._used)

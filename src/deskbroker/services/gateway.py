"""The broker's side of the gateway: route choice, tickets, port forwards, reports.

Route choice: a native viewer on a client inside the desktops' network (an address in
``gateway_direct_networks``) connects to the desktop directly, with the broker out of the
data path; any other client goes through the gateway's TCP port forward when a gateway is
configured. An HTML5 desktop always goes through the gateway (a browser speaks no RFB or
SSH over TCP). With no gateway configured every client connects directly, as before.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deskbroker import outbound
from deskbroker.config import Settings
from deskbroker.domain import tickets
from deskbroker.errors import BadRequest, Conflict, DeskbrokerError, NotFound, Unauthorized
from deskbroker.protocols.descriptors import HTML5_NATIVE, HTML5_PAGES, Protocol
from deskbroker.services.context import BrokerContext
from deskbroker.store import desktop_rows, events
from deskbroker.write_guard import ensure_no_write_unit

Route = Literal["direct", "gateway"]
# How far a gateway report's signature time may be from the broker's clock.
REPORT_WINDOW_S = 300
SIGNATURE_HEADER = "X-Deskbroker-Gateway-Signature"


class GatewayUnavailable(DeskbrokerError):
    status = 503
    title = "Gateway unavailable"


@dataclass(frozen=True)
class Plan:
    """How one connection goes: directly, or through the gateway with this ticket."""

    route: Route
    ticket: str = ""
    expires_at: int | None = None


def configured(settings: Settings) -> bool:
    return bool(settings.gateway_url and settings.gateway_key)


def normalised_networks(items: list[str]) -> list[str]:
    """A center's ``direct_networks`` checked at the edge: each a CIDR (or one address),
    written back in its canonical form (``10.1.2.3/8`` is ``10.0.0.0/8``), no repeats.

    A ``ValueError`` in words for anything else (the API answers it 422)."""
    found: list[str] = []
    for item in items:
        text = item.strip()
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(
                f"{item!r} is not a network; write a CIDR such as 10.20.0.0/16 or fd00::/8"
            ) from None
        if str(network) not in found:
            found.append(str(network))
    return found


# OpenSSH public key types a desktop's sshd may show (the certificate forms aside).
HOST_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
MAX_HOST_KEYS = 8


def host_key(line: str) -> str:
    """One OpenSSH public key line (``ssh-ed25519 AAAA... comment``) checked and written
    as ``type base64`` (the comment dropped); a ``ValueError`` in words otherwise."""
    parts = line.split()
    if len(parts) < 2 or parts[0] not in HOST_KEY_TYPES:
        raise ValueError(
            f"{line[:60]!r} is not an SSH public key line such as 'ssh-ed25519 AAAAC3...' "
            "(the contents of /etc/ssh/ssh_host_ed25519_key.pub)"
        )
    kind, data = parts[0], parts[1]
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {kind} key's data is not base64") from None
    size = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    if blob[4 : 4 + size] != kind.encode():
        raise ValueError(f"the key's data is not a {kind} key")
    return f"{kind} {data}"


def normalised_host_keys(lines: list[str]) -> list[str]:
    """A desktop's ``ssh_host_keys`` checked at the edge (see ``host_key``), no repeats."""
    if len(lines) > MAX_HOST_KEYS:
        raise ValueError(f"at most {MAX_HOST_KEYS} host keys per desktop")
    found: list[str] = []
    for line in lines:
        key = host_key(line)
        if key not in found:
            found.append(key)
    return found


def is_inside(settings: Settings, client: str | None, extra: Sequence[str] | None = None) -> bool:
    """True when the client's address is in one of the networks of direct clients: the
    broker's ``gateway_direct_networks`` or ``extra`` (the desktop's center's)."""
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:10.0.0.5 is 10.0.0.5
    networks = outbound.parse_networks(settings.gateway_direct_networks, "gateway_direct_networks")
    networks += outbound.parse_networks(",".join(extra or ()), "direct_networks")
    return any(address.version == n.version and address in n for n in networks)


def route(
    settings: Settings,
    protocol: Protocol,
    client: str | None,
    direct_networks: Sequence[str] | None = None,
) -> Route:
    """Direct or through the gateway (see the module's docstring); a 409 in words when a
    browser desktop is asked of a broker with no gateway. ``direct_networks`` are the
    desktop's center's, on top of the broker's own."""
    if protocol in HTML5_NATIVE:
        if not configured(settings):
            raise Conflict(
                f"{protocol.value} needs the gateway, and this broker has none; ask an "
                "administrator to set DESKBROKER_GATEWAY_URL and DESKBROKER_GATEWAY_KEY, or "
                "connect with a native viewer"
            )
        return "gateway"
    if not configured(settings) or is_inside(settings, client, direct_networks):
        return "direct"
    return "gateway"


class TargetRefused(Conflict):
    """A desktop whose address the outbound policy denies: no gateway connects to it."""

    title = "Desktop address not allowed"


def check_target(settings: Settings, desktop_name: str, host: str) -> None:
    """Refuse (409) a gateway connection to an address the broker's outbound policy
    denies: the gateway host's loopback services, the cloud metadata service. A tenant
    admin writes a static desktop's address; it must not open a tunnel into the host.

    Pure, as ``mint`` must be inside a write unit: an address written as a number or a
    name of the local host is checked here; any other name is checked by the gateway
    against the address it resolves to, before it connects."""
    reason = settings.outbound_policy.host_refusal(host)
    if reason is not None:
        raise TargetRefused(
            f"desktop {desktop_name}'s address {host} is not allowed by the broker's "
            f"outbound policy: {reason}. No connection is made to it; an operator who "
            "means it allows the network with DESKBROKER_OUTBOUND_ALLOW (and the "
            "gateway's DESKBROKER_GATEWAY_OUTBOUND_ALLOW)"
        )


def mint(
    settings: Settings,
    *,
    user_id: str,
    username: str,
    tenant_id: str,
    desktop_id: str,
    desktop_name: str,
    protocol: Protocol,
    host: str,
    port: int,
    client: str | None,
    host_keys: Sequence[str] = (),
) -> Plan:
    """A gateway ticket for one connection (pure: no I/O, fine inside a write unit);
    ``TargetRefused`` when the outbound policy denies ``host`` (see ``check_target``).

    ``host_keys``: an SSH desktop's known host keys; with none, the ticket lets the
    gateway learn the key when the broker is set to (``gateway_ssh_learn_host_keys``)."""
    check_target(settings, desktop_name, host)
    text, ticket = tickets.mint(
        settings.gateway_key,
        now=int(time.time()),
        ttl_s=settings.ticket_ttl_s,
        user_id=user_id,
        username=username,
        tenant_id=tenant_id,
        desktop_id=desktop_id,
        desktop_name=desktop_name,
        protocol=protocol.value,
        host=host,
        port=port,
        gateway_id=settings.gateway_id,
        client=(client or "") if settings.gateway_bind_client else "",
        host_keys=tuple(host_keys),
        learn_host_key=protocol is Protocol.HTML5_SSH
        and not host_keys
        and settings.gateway_ssh_learn_host_keys,
    )
    return Plan(route="gateway", ticket=text, expires_at=ticket.expires_at)


def launch_url(settings: Settings, protocol: Protocol, ticket: str) -> str:
    """The gateway's viewer page for ``protocol``, the ticket in its fragment (never sent
    to a server, never in a Referer): ``{gateway_url}/viewer/vnc.html#ticket=...``."""
    return f"{settings.gateway_url}/viewer/{HTML5_PAGES[protocol]}#ticket={ticket}"


def forward_host(settings: Settings) -> str:
    return settings.gateway_forward_host or (urlsplit(settings.gateway_url).hostname or "")


def open_forward(settings: Settings, ticket: str) -> int:
    """Redeem a ticket at the gateway for a TCP port forward; the port it opened.

    A network call: never inside a write unit."""
    ensure_no_write_unit("the gateway's port forward")
    url = f"{settings.gateway_url}/forwards"
    try:
        answer = httpx.post(url, json={"ticket": ticket}, timeout=10.0)
    except httpx.HTTPError as exc:
        raise GatewayUnavailable(
            f"the gateway at {settings.gateway_url} cannot be reached ({exc.__class__.__name__}); "
            "try again, or ask an administrator"
        ) from exc
    if answer.status_code != 201:
        try:
            detail = str(answer.json().get("detail", ""))
        except ValueError:
            detail = answer.text[:200]
        raise GatewayUnavailable(f"the gateway refused a port forward: {detail}")
    port = answer.json().get("port")
    if not isinstance(port, int):
        raise GatewayUnavailable("the gateway answered a port forward without a port")
    return port


class GatewayReport(BaseModel):
    """One connection the gateway opened or closed, with its bytes and duration."""

    model_config = ConfigDict(extra="forbid")

    gateway_id: str = Field(max_length=64)
    event: Literal["gateway.open", "gateway.close", "gateway.hostkey"]
    ticket_id: str = Field(max_length=64)
    tenant_id: str = Field(max_length=32)
    user_id: str = Field(max_length=32)
    desktop_id: str = Field(max_length=32)
    protocol: str = Field(max_length=20)
    kind: str = Field(max_length=20)
    started_at: float = Field(ge=0)
    duration_s: float = Field(ge=0, le=10 * 366 * 86400)
    bytes_up: int = Field(ge=0, le=2**62)
    bytes_down: int = Field(ge=0, le=2**62)
    # ``gateway.hostkey``: the SSH host key the gateway saw on a ticket that let it learn.
    host_key: str | None = Field(default=None, max_length=4096)


def check_signature(settings: Settings, header: str, body: bytes, now: int) -> None:
    """The gateway's credential: an HMAC of the body under the report key, recent."""
    if not settings.gateway_key:
        raise Unauthorized("this broker has no gateway key: no gateway may report to it")
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    stamp = fields.get("t", "")
    if not stamp.isdigit():
        raise Unauthorized(f"a gateway report needs a {SIGNATURE_HEADER} header: t=...,sig=...")
    if abs(now - int(stamp)) > REPORT_WINDOW_S:
        raise Unauthorized("the gateway report's signature is too old (are the clocks set?)")
    expected = tickets.sign(tickets.report_key(settings.gateway_key), stamp.encode() + b"." + body)
    if not hmac.compare_digest(expected, fields.get("sig", "")):
        raise Unauthorized("the gateway report's signature is wrong")


def record_report(ctx: BrokerContext, header: str, body: bytes) -> GatewayReport:
    """Check a gateway's signed report and append it to the desktop's events."""
    check_signature(ctx.settings, header, body, int(time.time()))
    try:
        report = GatewayReport.model_validate(json.loads(body))
    except (ValueError, ValidationError) as exc:
        raise BadRequest(f"not a gateway report: {exc}") from exc
    if report.gateway_id != ctx.settings.gateway_id:
        raise Unauthorized(f"gateway {report.gateway_id!r} is not this broker's gateway")
    detail: dict[str, Any] = {
        "gateway_id": report.gateway_id,
        "ticket_id": report.ticket_id,
        "protocol": report.protocol,
        "kind": report.kind,
        "started_at": report.started_at,
        "duration_s": report.duration_s,
        "bytes_up": report.bytes_up,
        "bytes_down": report.bytes_down,
    }
    learned = ""
    if report.event == "gateway.hostkey":
        try:
            learned = host_key(report.host_key or "")
        except ValueError as exc:
            raise BadRequest(f"not a host key: {exc}") from exc
        detail["host_key"] = learned
    with ctx.db.write() as session:
        if learned and ctx.settings.gateway_ssh_learn_host_keys:
            desktop = desktop_rows.of_tenant(session, report.desktop_id, report.tenant_id)
            # Trust on first use: pinned only while no key is known (never replaced).
            if desktop is not None and not desktop.ssh_host_keys:
                desktop.ssh_host_keys = [learned]
        # The desktop must be the tenant's: a report names no other tenant's desktop.
        written = events.append_for_desktop(
            session,
            report.event,
            tenant_id=report.tenant_id,
            desktop_id=report.desktop_id,
            actor=f"gateway:{report.gateway_id}",
            user_id=report.user_id,
            detail=detail,
        )
    if not written:
        raise NotFound(f"desktop {report.desktop_id} is not in tenant {report.tenant_id}")
    return report

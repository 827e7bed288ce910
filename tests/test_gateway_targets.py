"""No gateway tunnel to an address the outbound policy denies.

A tenant admin writes a static desktop's address. Pointed at the gateway host's loopback
services or at the cloud metadata service, a connect must be refused by the broker (no
ticket is minted), and a ticket that names such an address anyway is refused by the
gateway itself, which checks the address a name resolves to before it connects. An
address the operator allows is tunnelled as before."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from deskbroker import outbound
from deskbroker.bootstrap import add_local_user
from deskbroker.config import Settings
from deskbroker.outbound import OutboundPolicy
from deskbroker.protocols.descriptors import Protocol
from deskbroker.services import gateway as gateway_service
from deskbroker.services.context import BrokerContext
from tests.gateway_support import (
    GATEWAY_KEY,
    Running,
    broker_and_gateway,
    closed_with,
    connect,
    signed_ticket,
)
from tests.helpers import ADMIN_PASSWORD, Api

BANNER = b"LOOPBACK-ONLY SERVICE v1\n"


@dataclass
class LoopbackService:
    """A service of the gateway's host that listens on loopback only."""

    port: int
    accepted: int = 0


@pytest.fixture
def loopback_service() -> Iterator[LoopbackService]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    service = LoopbackService(server.getsockname()[1])

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            service.accepted += 1
            conn.sendall(BANNER)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield service
    server.close()


def production_policy(ctx: BrokerContext) -> None:
    """The default policy, as in production: loopback and link-local denied, for the
    broker's settings and for the process (the in-process gateway's connections).

    Applied once the desktop is saved (the save itself would be refused, 422): a center
    saved before the operator narrowed the policy is still refused a tunnel."""
    ctx.settings.outbound_allow = ""
    outbound.install(OutboundPolicy())  # conftest's autouse fixture puts it back


def _tenant_desktop(api: Api, ctx: BrokerContext, address: str, port: int) -> str:
    """A tenant admin's static desktop at ``address``, handed to user mallory: its id."""
    api.post("tenants", {"name": "evil"})
    add_local_user(ctx, "evil-boss", ADMIN_PASSWORD, role="tenant_admin", tenant_name="evil")
    ctx.cache.invalidate()
    answer = api.client.post(
        "/api/v1/auth/login",
        json={"username": "evil-boss", "password": ADMIN_PASSWORD, "tenant": "evil"},
    )
    admin = Api(api.client, ctx, answer.json()["token"])
    machine = {"name": "target-1", "address": address, "ports": {"vnc": port}}
    center = admin.post(
        "centers", {"name": "targets", "kind": "static", "params": {"machines": [machine]}}
    )
    desktop: str = admin.get(f"desktops?center_id={center['id']}")["items"][0]["id"]
    pool = admin.post("pools", {"name": "targets", "center_ids": [center["id"]]})
    policy = admin.post("policies", {"name": "targets", "entries": [{"pool_id": pool["id"]}]})
    source = admin.get("identity-sources")["items"][0]["id"]
    admin.post("assignment-rules", {"identity_source_id": source, "policy_id": policy["id"]})
    admin.post(
        "users",
        {"identity_source_id": source, "username": "mallory", "password": "mallory-password-1"},
    )
    return desktop


def _mallory(broker: Running) -> str:
    answer = httpx.post(
        f"{broker.url}/api/v1/auth/login",
        json={"username": "mallory", "password": "mallory-password-1", "tenant": "evil"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


def _read(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.settimeout(5)
        try:
            return sock.recv(200)
        except TimeoutError:
            return b""


def test_no_tunnel_to_a_loopback_service_of_the_gateway_host(
    api: Api, ctx: BrokerContext, loopback_service: LoopbackService
) -> None:
    desktop = _tenant_desktop(api, ctx, "127.0.0.1", loopback_service.port)
    production_policy(ctx)
    with broker_and_gateway(ctx) as (broker, _gateway):
        token = _mallory(broker)
        for protocol in ("vnc", "html5-vnc"):
            refused = connect(broker, token, desktop, protocol, status=409)
            assert "127.0.0.1" in refused["detail"]
            assert "not allowed by the broker's outbound policy" in refused["detail"]
            assert "DESKBROKER_OUTBOUND_ALLOW" in refused["detail"]
    assert loopback_service.accepted == 0


def test_no_tunnel_to_the_cloud_metadata_service(api: Api, ctx: BrokerContext) -> None:
    ctx.settings.outbound_allow = "169.254.0.0/16"  # allowed when saved, denied since
    desktop = _tenant_desktop(api, ctx, "169.254.169.254", 80)
    production_policy(ctx)
    with broker_and_gateway(ctx) as (broker, _gateway):
        refused = connect(broker, _mallory(broker), desktop, "vnc", status=409)
    assert "169.254.169.254 is in 169.254.0.0/16" in refused["detail"]


def test_an_allowed_address_is_still_tunnelled(
    api: Api, ctx: BrokerContext, loopback_service: LoopbackService
) -> None:
    # The operator allows loopback (the tests' settings, as the demo's).
    assert "127.0.0.0/8" in ctx.settings.outbound_allow
    desktop = _tenant_desktop(api, ctx, "127.0.0.1", loopback_service.port)
    with broker_and_gateway(ctx) as (broker, _gateway):
        answer = connect(broker, _mallory(broker), desktop, "vnc")
        assert answer["route"] == "gateway"
        assert _read(answer["host"], answer["port"]) == BANNER


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.1", "0x7f000001", "localhost", "::1", "[::ffff:127.0.0.1]"]
)
def test_a_ticket_is_never_minted_for_a_denied_address(settings: Settings, host: str) -> None:
    settings = _with(settings, outbound_allow="", gateway_key=GATEWAY_KEY)
    with pytest.raises(gateway_service.TargetRefused, match="outbound policy"):
        _mint(settings, host)


def test_names_and_allowed_networks_are_minted(settings: Settings) -> None:
    settings = _with(settings, outbound_allow="", gateway_key=GATEWAY_KEY)
    for host in ("10.0.0.5", "desktop-7.lab.example"):  # a name: the gateway checks it
        assert _mint(settings, host).ticket
    # A global administrator may open loopback again.
    opened = _with(settings, outbound_allow="127.0.0.1/32")
    assert _mint(opened, "127.0.0.1").ticket


def _with(settings: Settings, **update: str) -> Settings:
    changed = settings.model_copy(update=update)
    vars(changed).pop("outbound_policy", None)  # a copy keeps the policy computed before
    return changed


def _mint(settings: Settings, host: str) -> gateway_service.Plan:
    return gateway_service.mint(
        settings,
        user_id="u",
        username="mallory",
        tenant_id="t",
        desktop_id="d",
        desktop_name="target-1",
        protocol=Protocol.VNC,
        host=host,
        port=5900,
        client="127.0.0.1",
    )


def test_the_gateway_refuses_a_denied_address_itself(
    ctx: BrokerContext, loopback_service: LoopbackService
) -> None:
    with broker_and_gateway(ctx) as (_broker, gateway):
        outbound.install(OutboundPolicy())  # the gateway process's default policy
        # "localhost" is a name: the gateway resolves it and checks what it reached.
        forward = httpx.post(
            f"{gateway.url}/forwards",
            json={"ticket": signed_ticket("localhost", loopback_service.port, "vnc")},
            timeout=10,
        )
        assert forward.status_code == 409, forward.text
        assert "DESKBROKER_GATEWAY_OUTBOUND" in forward.json()["detail"]
        ticket = signed_ticket("localhost", loopback_service.port, "html5-vnc")
        url = f"ws://127.0.0.1:{gateway.port}/ws/vnc?ticket={ticket}"
        code, reason = asyncio.run(closed_with(url))
        assert code != 1000 and "is not connected to" in reason
    assert loopback_service.accepted == 0


def test_the_gateway_process_takes_its_policy_from_its_settings() -> None:
    from deskbroker.gateway.settings import GatewaySettings

    plain = GatewaySettings(key=GATEWAY_KEY)
    assert plain.outbound_policy.refusal("127.0.0.1") is not None
    assert plain.outbound_policy.refusal("169.254.169.254") is not None
    opened = GatewaySettings(key=GATEWAY_KEY, outbound_allow="127.0.0.0/8")
    assert opened.outbound_policy.refusal("127.0.0.1") is None
    with pytest.raises(ValueError, match="outbound_deny"):
        GatewaySettings(key=GATEWAY_KEY, outbound_deny="not-a-network")

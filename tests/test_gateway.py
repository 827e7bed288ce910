"""The gateway over real HTTP: a broker, a gateway and Xvnc desktops on loopback.

Tickets refused (forged, expired, replayed, for another desktop, protocol or gateway),
the noVNC relay carrying real RFB bytes, port forwards bound to the client's address,
route choice, byte accounting reported to the broker, drain mode and the report API's
refusals."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from deskbroker import xvnc
from deskbroker.domain import tickets
from deskbroker.gateway.accounting import SIGNATURE_HEADER, signature_header
from deskbroker.services.context import BrokerContext
from tests.gateway_support import (
    GATEWAY_KEY,
    Running,
    broker_and_gateway,
    connect,
    free_port,
    ticket_of,
    user_token,
)
from tests.helpers import USER_PASSWORD, Api
from tests.tools import XVNC, require


@pytest.fixture
def desktops(api: Api) -> Iterator[dict[str, Any]]:
    """Two Xvnc desktops behind a static center, one per user."""
    require(XVNC)
    port = free_port("127.0.1.1")
    running = [xvnc.start(f"127.0.1.{i}", port=port) for i in (1, 2)]
    try:
        api.seed_pool(2, users=2, ports={"vnc": port})
        ids = {}
        for name in ("user0", "user1"):
            offer = api.login(name)["offers"][0]
            ids[name] = offer["desktop"]["id"]
        yield {"port": port, "ids": ids}
    finally:
        for desktop in running:
            desktop.stop()


@pytest.fixture
def world(ctx: BrokerContext, desktops: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with broker_and_gateway(ctx) as (broker, gateway):
        tokens = {n: user_token(broker, n, USER_PASSWORD) for n in ("user0", "user1")}
        yield {"broker": broker, "gateway": gateway, "tokens": tokens, **desktops}


def ws_url(gateway: Running, path: str, ticket: str) -> str:
    return f"ws://127.0.0.1:{gateway.port}{path}?ticket={ticket}"


async def _rfb_banner(url: str) -> bytes:
    async with websockets.connect(url) as ws:
        data = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(data, bytes)
        return data


async def _refusal(url: str) -> tuple[int, str]:
    async with websockets.connect(url) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        return closed.value.rcvd.code, closed.value.rcvd.reason


def refusal(url: str) -> tuple[int, str]:
    return asyncio.run(_refusal(url))


def events(api: Api, kind: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        items: list[dict[str, Any]] = api.get(f"events?kind={kind}")["items"]
        if len(items) >= count or time.monotonic() > deadline:
            return items
        time.sleep(0.1)


def test_novnc_relay_carries_the_desktop_and_reports_its_bytes(
    api: Api, world: dict[str, Any]
) -> None:
    broker, gateway = world["broker"], world["gateway"]
    desktop = world["ids"]["user0"]
    answer = connect(broker, world["tokens"]["user0"], desktop, "html5-vnc")
    assert answer["route"] == "gateway" and answer["protocol"] == "html5-vnc"
    assert answer["launch_url"].startswith(f"{gateway.url}/viewer/vnc.html#ticket=")
    assert answer["ticket_expires_at"] - time.time() == pytest.approx(60, abs=5)
    ticket = ticket_of(answer["launch_url"])
    # The gateway relays the real Xvnc's RFB banner to the browser's WebSocket.
    assert asyncio.run(_rfb_banner(ws_url(gateway, "/ws/vnc", ticket))) == b"RFB 003.008\n"
    # Replayed: the same ticket opens nothing more.
    code, reason = refusal(ws_url(gateway, "/ws/vnc", ticket))
    assert (code, reason) == (4403, "the ticket was used already; connect again from the portal")
    # The connection's bytes and duration reached the broker as events of that desktop.
    closed = events(api, "gateway.close", 1)
    assert len(closed) == 1
    assert closed[0]["desktop_id"] == desktop
    detail = closed[0]["detail"]
    assert detail["bytes_down"] >= 12 and detail["protocol"] == "html5-vnc"
    assert detail["gateway_id"] == "gw-test" and detail["duration_s"] >= 0
    assert len(events(api, "gateway.open", 1)) == 1
    [connected] = api.get("events?kind=connect")["items"]
    assert connected["detail"]["route"] == "gateway"


def test_forged_expired_and_misused_tickets_are_refused(world: dict[str, Any]) -> None:
    broker, gateway = world["broker"], world["gateway"]
    mine, theirs = world["ids"]["user0"], world["ids"]["user1"]
    answer = connect(broker, world["tokens"]["user0"], mine, "html5-vnc")
    ticket = ticket_of(answer["launch_url"])
    url = "/ws/vnc"

    def mint(**extra: Any) -> str:
        values: dict[str, Any] = {
            "now": int(time.time()),
            "user_id": "u",
            "username": "user0",
            "tenant_id": "t",
            "desktop_id": theirs,
            "desktop_name": "lab-001",
            "protocol": "html5-vnc",
            "host": "127.0.1.2",
            "port": world["port"],
            "gateway_id": "gw-test",
        }
        values.update(extra)
        key = values.pop("key", GATEWAY_KEY)
        return tickets.mint(key, **values)[0]

    # Forged: signed with a key that is not the gateway key.
    forged = mint(key="not-the-gateway-key-0123456789abcdefgh")
    assert refusal(ws_url(gateway, url, forged))[0] == 4403
    # Another desktop: my ticket with its desktop and target changed.
    signature = ticket.split(".")[1]
    other = mint().split(".")[0]
    code, reason = refusal(ws_url(gateway, url, f"{other}.{signature}"))
    assert code == 4403 and "signature is wrong" in reason
    # Another user's desktop cannot be had from the broker at all.
    connect(broker, world["tokens"]["user0"], theirs, "html5-vnc", status=404)
    # Expired.
    code, reason = refusal(ws_url(gateway, url, mint(now=int(time.time()) - 120)))
    assert code == 4403 and "expired" in reason
    # For another protocol (an SSH ticket at the VNC relay) or another gateway.
    code, reason = refusal(ws_url(gateway, url, mint(protocol="html5-ssh")))
    assert code == 4403 and "html5-ssh" in reason
    code, reason = refusal(ws_url(gateway, url, mint(gateway_id="gw-other")))
    assert code == 4403 and "another gateway" in reason
    # No ticket at all.
    assert refusal(ws_url(gateway, url, ""))[0] == 4403
    # My own ticket still works: nothing above consumed it.
    assert asyncio.run(_rfb_banner(ws_url(gateway, url, ticket))).startswith(b"RFB ")


def _banner_from(host: str, port: int, source: str | None = None) -> bytes:
    with socket.socket() as sock:
        if source:
            sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect((host, port))
        data = b""
        while len(data) < 12:
            chunk = sock.recv(12 - len(data))
            if not chunk:
                break
            data += chunk
        return data


def test_a_native_viewer_outside_goes_through_a_port_forward(
    ctx: BrokerContext, world: dict[str, Any]
) -> None:
    broker, gateway = world["broker"], world["gateway"]
    desktop = world["ids"]["user0"]
    answer = connect(broker, world["tokens"]["user0"], desktop, "vnc")
    low, high = (int(p) for p in gateway.app.state.gateway.settings.forward_ports.split("-"))
    assert answer["route"] == "gateway" and answer["launch_url"] is None
    assert answer["host"] == "127.0.0.1" and low <= answer["port"] <= high
    assert f"Host=127.0.0.1\nPort={answer['port']}\n" in answer["content"]
    # Another address than the one the broker saw is not let in.
    assert _banner_from("127.0.0.1", answer["port"], source="127.0.0.9") == b""
    # The client itself is, to the real desktop.
    assert _banner_from("127.0.0.1", answer["port"]) == b"RFB 003.008\n"
    # A forward is opened by a ticket only.
    again = httpx.post(f"{gateway.url}/forwards", json={"ticket": "x.y"}, timeout=5)
    assert again.status_code == 403
    # A client inside the desktops' network connects directly.
    ctx.settings.gateway_direct_networks = "127.0.0.0/8"
    direct = connect(broker, world["tokens"]["user0"], desktop, "vnc")
    assert direct["route"] == "direct"
    assert (direct["host"], direct["port"]) == ("127.0.1.1", world["port"])


def test_the_forward_listener_closes_when_its_ticket_expires(
    ctx: BrokerContext, world: dict[str, Any]
) -> None:
    ctx.settings.ticket_ttl_s = 5
    answer = connect(world["broker"], world["tokens"]["user0"], world["ids"]["user0"], "vnc")
    time.sleep(6)
    with pytest.raises(OSError):
        _banner_from("127.0.0.1", answer["port"])


def test_drain_refuses_new_connections_and_keeps_open_ones(world: dict[str, Any]) -> None:
    broker, gateway = world["broker"], world["gateway"]
    token, desktop = world["tokens"]["user0"], world["ids"]["user0"]
    first = ticket_of(connect(broker, token, desktop, "html5-vnc")["launch_url"])
    second = ticket_of(connect(broker, token, desktop, "html5-vnc")["launch_url"])

    async def scenario() -> None:
        async with websockets.connect(ws_url(gateway, "/ws/vnc", first)) as ws:
            assert (await asyncio.wait_for(ws.recv(), 5)) == b"RFB 003.008\n"
            async with httpx.AsyncClient() as client:
                unsigned = await client.post(f"{gateway.url}/drain", content=b"{}")
                assert unsigned.status_code == 401
                body = b"{}"
                signed = await client.post(
                    f"{gateway.url}/drain",
                    content=body,
                    headers={
                        SIGNATURE_HEADER: signature_header(GATEWAY_KEY, body, int(time.time()))
                    },
                )
                assert signed.status_code == 200 and signed.json()["connections"] == 1
                health = await client.get(f"{gateway.url}/healthz")
                assert health.status_code == 503 and health.json()["status"] == "draining"
            code, reason = await _refusal(ws_url(gateway, "/ws/vnc", second))
            assert code == 4503 and "draining" in reason
            # The open connection still carries the desktop: answer the RFB version.
            await ws.send(b"RFB 003.008\n")
            security = await asyncio.wait_for(ws.recv(), 5)
            assert isinstance(security, bytes) and len(security) >= 2

    asyncio.run(scenario())


def test_reports_need_the_gateways_signature(api: Api, world: dict[str, Any]) -> None:
    broker = world["broker"]
    url = f"{broker.url}/api/v1/gateway/reports"
    report = {
        "gateway_id": "gw-test",
        "event": "gateway.close",
        "ticket_id": "t1",
        "tenant_id": api.get(f"desktops/{world['ids']['user0']}")["tenant_id"],
        "user_id": "u",
        "desktop_id": world["ids"]["user0"],
        "protocol": "vnc",
        "kind": "forward",
        "started_at": time.time(),
        "duration_s": 1.5,
        "bytes_up": 10,
        "bytes_down": 20,
    }
    body = json.dumps(report).encode()
    now = int(time.time())

    def post(content: bytes, header: str | None) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if header is not None:
            headers[SIGNATURE_HEADER] = header
        return httpx.post(url, content=content, headers=headers, timeout=10)

    assert post(body, None).status_code == 401
    assert (
        post(body, signature_header("wrong-key-0123456789abcdefghijkl", body, now)).status_code
        == 401
    )
    stale = post(body, signature_header(GATEWAY_KEY, body, now - 3600))
    assert stale.status_code == 401 and "too old" in stale.json()["detail"]
    bad = b'{"event": "gateway.close"}'
    assert post(bad, signature_header(GATEWAY_KEY, bad, now)).status_code == 400
    other = json.dumps({**report, "tenant_id": "someone-else"}).encode()
    assert post(other, signature_header(GATEWAY_KEY, other, now)).status_code == 404
    assert post(body, signature_header(GATEWAY_KEY, body, now)).status_code == 204
    [event] = api.get("events?kind=gateway.close")["items"]
    assert event["detail"]["bytes_down"] == 20 and event["actor"] == "gateway:gw-test"


def test_html5_without_a_gateway_is_a_clear_409(api: Api, desktops: dict[str, Any]) -> None:
    token = api.login("user0")["token"]
    answer = api.client.post(
        f"/api/v1/client/desktops/{desktops['ids']['user0']}/connect",
        json={"protocol": "html5-vnc"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 409
    assert "needs the gateway" in answer.json()["detail"]

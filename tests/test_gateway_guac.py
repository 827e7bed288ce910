"""HTML5 RDP's gateway side against a guacd stand-in: Debian has no guacd, so a small
server speaking the Guacamole protocol's handshake sits at the boundary. Checked: the
handshake the gateway makes for a ticket, instruction framing across TCP reads, the
tunnel's own pings, refusals, and guacamole-common-js in Chromium drawing what the
stand-in sends. Not checked here: a real guacd talking RDP to a real server."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from deskbroker.domain import tickets
from deskbroker.gateway import guac
from deskbroker.gateway.app import PAGES
from deskbroker.services.context import BrokerContext
from tests.gateway_support import GATEWAY_KEY, broker_and_gateway, chromium_page, free_port
from tests.helpers import Api, wait_until

ARGS = [
    "VERSION_1_5_0",
    "hostname",
    "port",
    "username",
    "password",
    "security",
    "ignore-cert",
    "width",
]
# What the stand-in draws once connected: a 200x100 layer filled with one colour.
DRAWING = (
    guac.encode("size", "0", "200", "100")
    + guac.encode("rect", "0", "0", "0", "200", "100")
    + guac.encode("cfill", "14", "0", "51", "102", "204", "255")
    + guac.encode("sync", "1234")
)


class GuacdStandIn:
    """A guacd that does the handshake, draws, then records what the client sends."""

    def __init__(self) -> None:
        self.port = free_port()
        self.handshake: dict[str, list[str]] = {}
        self.received: list[list[str]] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
            self.ready.set()
            async with self.server:
                await self.server.serve_forever()

        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(main())

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        instructions = guac.InstructionReader(reader)
        select = await instructions.instruction()
        self.handshake["select"] = select
        writer.write(guac.encode("args", *ARGS).encode())
        await writer.drain()
        for _ in range(5):
            got = await instructions.instruction()
            self.handshake[got[0]] = got
        writer.write(guac.encode("ready", "$standin-connection").encode())
        # One instruction split over two TCP writes: the gateway must not pass half on.
        half = len(DRAWING) // 2 + 3
        writer.write(DRAWING[:half].encode())
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(DRAWING[half:].encode())
        await writer.drain()
        while True:
            text = await instructions.chunk()
            if not text:
                break
            self.received.extend(guac.decode(text))
        writer.close()

    def __enter__(self) -> GuacdStandIn:
        self.thread.start()
        self.ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.thread.join(timeout=5)


def test_instruction_codec() -> None:
    assert guac.encode("size", "1024", "768") == "4.size,4.1024,3.768;"
    assert guac.encode("", "ping", "1") == "0.,4.ping,1.1;"
    # Lengths count code points, not bytes.
    assert guac.encode("name", "héllo") == "4.name,5.héllo;"
    text = "4.size,1.0;5.mouse,1.1,1.2"
    assert guac.complete_prefix(text) == len("4.size,1.0;")
    assert guac.decode(text[:11]) == [["size", "0"]]
    with pytest.raises(guac.GuacError):
        guac.complete_prefix("x.size;")


@pytest.fixture
def standin() -> Iterator[GuacdStandIn]:
    with GuacdStandIn() as server:
        yield server


def _ticket(**extra: Any) -> str:
    values: dict[str, Any] = {
        "now": int(time.time()),
        "user_id": "u",
        "username": "alice",
        "tenant_id": "t",
        "desktop_id": "d",
        "desktop_name": "desk",
        "protocol": "html5-rdp",
        "host": "10.1.2.3",
        "port": 3390,
        "gateway_id": "gw-test",
    }
    values.update(extra)
    return tickets.mint(GATEWAY_KEY, **values)[0]


def test_the_gateway_does_guacds_handshake_and_relays_whole_instructions(
    ctx: BrokerContext, api: Api, standin: GuacdStandIn
) -> None:
    with broker_and_gateway(ctx, guacd=f"127.0.0.1:{standin.port}") as (_broker, gateway):
        url = f"ws://127.0.0.1:{gateway.port}/ws/rdp?ticket={_ticket()}&width=1280&height=720"

        async def session() -> list[str]:
            async with websockets.connect(url, subprotocols=["guacamole"]) as ws:
                assert ws.subprotocol == "guacamole"
                frames = [await asyncio.wait_for(ws.recv(), 5) for _ in range(2)]
                await ws.send(guac.encode("", "ping", "42"))
                frames.append(await asyncio.wait_for(ws.recv(), 5))
                await ws.send(guac.encode("mouse", "10", "20", "1"))
                await asyncio.sleep(0.3)
                return [str(f) for f in frames]

        frames = asyncio.run(session())
    # The tunnel's id first, then guacd's drawing as whole instructions only.
    assert frames[0].startswith("0.,36.") and frames[0].endswith(";")
    drawn = "".join(frames[1:2])
    assert guac.complete_prefix(drawn) == len(drawn)
    assert frames[2] == guac.encode("", "ping", "42")
    assert standin.handshake["select"] == ["select", "rdp"]
    assert standin.handshake["size"] == ["size", "1280", "720", "96"]
    assert standin.handshake["connect"] == [
        "connect",
        "VERSION_1_5_0",
        "10.1.2.3",
        "3390",
        "alice",
        "",
        "any",
        "true",
        "1280",
    ]
    assert ["mouse", "10", "20", "1"] in standin.received
    # The ping was answered by the gateway, never passed to guacd.
    assert not any(i[:2] == ["", "ping"] for i in standin.received)


def test_html5_rdp_refusals(ctx: BrokerContext, api: Api) -> None:
    async def closed(url: str) -> tuple[int, str]:
        async with websockets.connect(url) as ws:
            with pytest.raises(websockets.ConnectionClosed) as exc:
                await asyncio.wait_for(ws.recv(), 5)
            assert exc.value.rcvd is not None
            return exc.value.rcvd.code, exc.value.rcvd.reason

    # No guacd configured: a clear close reason.
    with broker_and_gateway(ctx) as (_broker, gateway):
        url = f"ws://127.0.0.1:{gateway.port}/ws/rdp?ticket={_ticket()}"
        code, reason = asyncio.run(closed(url))
        assert code == 4503 and "no guacd" in reason
        # A VNC ticket is not an RDP one.
        url = f"ws://127.0.0.1:{gateway.port}/ws/rdp?ticket={_ticket(protocol='html5-vnc')}"
        assert asyncio.run(closed(url))[0] == 4403
    # guacd configured but not answering.
    with broker_and_gateway(ctx, guacd=f"127.0.0.1:{free_port()}") as (_broker, gateway):
        url = f"ws://127.0.0.1:{gateway.port}/ws/rdp?ticket={_ticket()}"
        code, reason = asyncio.run(closed(url))
        assert code == 4503 and "does not answer" in reason


def test_guacamole_common_js_in_chromium_draws_what_guacd_sends(
    ctx: BrokerContext, api: Api, standin: GuacdStandIn
) -> None:
    if not (PAGES / "vendor" / "guacamole" / "guacamole-common.js").is_file():
        pytest.fail("viewer assets missing: run `make viewer-assets`", pytrace=False)
    with (
        broker_and_gateway(ctx, guacd=f"127.0.0.1:{standin.port}") as (_broker, gateway),
        chromium_page() as page,
    ):
        page.goto(f"{gateway.url}/viewer/rdp.html#ticket={_ticket()}")
        page.wait_for_selector("body[data-state=connected]", timeout=30000)

        def pixel() -> list[int]:
            found: list[int] = page.evaluate(
                """() => {
                    const c = document.querySelector('#screen canvas');
                    if (!c) return [];
                    return Array.from(c.getContext('2d').getImageData(100, 50, 1, 1).data);
                }"""
            )
            return found

        wait_until(
            lambda: pixel()[:3] == [51, 102, 204],
            lambda: f"the desktop's colour on the page's canvas (last {pixel()[:3]})",
            timeout_s=10,
            interval_s=0.2,
        )
        assert page.foreign == []
    assert standin.handshake["select"] == ["select", "rdp"]

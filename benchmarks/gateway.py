"""Gateway benchmark on loopback: relayed traffic against a direct connection.

    benchmarks/gateway.py --json [--mb 200] [--connections 200]

Prints ``mb_per_s`` (a bulk download through a gateway TCP port forward),
``direct_mb_per_s`` (the same download straight from the server), ``ws_mb_per_s`` (the
same through the WebSocket relay the HTML5 viewers use), ``added_latency_ms`` (median
round trip of a small message through the forward minus direct), and ``connections``
(WebSocket relays held open at once, each of which echoed a message).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import websockets
from tests.gateway_support import free_port, free_range, serve

from deskbroker.domain import tickets

KEY = "benchmark-gateway-key-0123456789abcdefghij"
CHUNK = 256 * 1024


class Servers:
    """A bulk source and an echo server on 127.0.0.1, in a thread of their own."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.source_port = free_port()
        self.echo_port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        block = b"\x5a" * CHUNK

        async def source(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            left = self.total
            while left > 0:
                writer.write(block[: min(left, CHUNK)])
                left -= CHUNK
                await writer.drain()
            writer.close()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        async def main() -> None:
            await asyncio.start_server(source, "127.0.0.1", self.source_port)
            await asyncio.start_server(echo, "127.0.0.1", self.echo_port)
            self.ready.set()
            await asyncio.Event().wait()

        self.loop.run_until_complete(main())


def ticket(protocol: str, port: int, gateway_id: str) -> str:
    return tickets.mint(
        KEY,
        now=int(time.time()),
        ttl_s=120,
        user_id="bench",
        username="bench",
        tenant_id="bench",
        desktop_id="bench",
        desktop_name="bench",
        protocol=protocol,
        host="127.0.0.1",
        port=port,
        gateway_id=gateway_id,
    )[0]


def download(port: int) -> float:
    """Seconds to read everything the source sends."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        while sock.recv(CHUNK):
            pass
    return time.perf_counter() - start


def round_trips(port: int, count: int) -> list[float]:
    times = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(b"x" * 64)
            got = 0
            while got < 64:
                got += len(sock.recv(64))
            times.append(time.perf_counter() - start)
    return times


def forward(gateway_url: str, port: int) -> int:
    answer = httpx.post(
        f"{gateway_url}/forwards", json={"ticket": ticket("rdp", port, "bench")}, timeout=10
    )
    answer.raise_for_status()
    forwarded: int = answer.json()["port"]
    return forwarded


async def ws_download(gateway_port: int, source_port: int) -> float:
    url = f"ws://127.0.0.1:{gateway_port}/ws/vnc?ticket={ticket('html5-vnc', source_port, 'bench')}"
    start = time.perf_counter()
    async with websockets.connect(url, max_size=None) as ws:
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed:
            pass
    return time.perf_counter() - start


async def hold(gateway_port: int, echo_port: int, count: int) -> int:
    """Open ``count`` relays at once; how many echoed a message while all were open."""
    sockets = []
    ok = 0
    try:
        for _ in range(count):
            url = (
                f"ws://127.0.0.1:{gateway_port}/ws/vnc?"
                f"ticket={ticket('html5-vnc', echo_port, 'bench')}"
            )
            sockets.append(await websockets.connect(url))
        for ws in sockets:
            await ws.send(b"ping")
        for ws in sockets:
            if await asyncio.wait_for(ws.recv(), 10) == b"ping":
                ok += 1
    finally:
        for ws in sockets:
            await ws.close()
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    from deskbroker.gateway.app import create_app
    from deskbroker.gateway.settings import GatewaySettings

    total = args.mb * 1024 * 1024
    servers = Servers(total)
    low, high = free_range(20)
    settings = GatewaySettings(
        key=KEY,
        id="bench",
        port=free_port(),
        forward_ports=f"{low}-{high}",
        max_connections=args.connections + 10,
    )
    gateway = serve(create_app(settings), settings.port)
    try:
        direct_s = download(servers.source_port)
        relayed_s = download(forward(gateway.url, servers.source_port))
        ws_s = asyncio.run(ws_download(gateway.port, servers.source_port))
        direct_rt = statistics.median(round_trips(servers.echo_port, 500))
        relayed_rt = statistics.median(round_trips(forward(gateway.url, servers.echo_port), 500))
        held = asyncio.run(hold(gateway.port, servers.echo_port, args.connections))
    finally:
        gateway.stop()
    mb = total / 1e6
    result: dict[str, Any] = {
        "mb_per_s": round(mb / relayed_s, 1),
        "direct_mb_per_s": round(mb / direct_s, 1),
        "ws_mb_per_s": round(mb / ws_s, 1),
        "added_latency_ms": round((relayed_rt - direct_rt) * 1000, 3),
        "connections": held,
        "megabytes": round(mb, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

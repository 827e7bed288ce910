"""Running the gateway: uvicorn, plus drain on SIGUSR1 and a draining stop on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn

from deskbroker import outbound
from deskbroker.gateway.app import create_app
from deskbroker.gateway.settings import GatewaySettings
from deskbroker.gateway.state import GatewayState

log = logging.getLogger("deskbroker.gateway")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the gateway drains before it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: GatewaySettings) -> None:
    """Serve until stopped. SIGUSR1 drains (refuse new connections, keep the open ones);
    SIGTERM drains and exits once the open connections end or ``drain_timeout_s`` passes."""
    # Where tickets' desktops may be: checked on every connection the gateway opens.
    outbound.install(settings.outbound_policy)
    app = create_app(settings)
    state: GatewayState = app.state.gateway
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,  # a ticket in a WebSocket's query string stays out of logs
        proxy_headers=False,
        ws="websockets-sansio",
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()

    async def stop_after_drain() -> None:
        state.drain()
        log.info("draining: %d connections open", len(state.meters))
        if not await state.drained(settings.drain_timeout_s):
            log.warning("drain timed out with %d connections open", len(state.meters))
        server.should_exit = True

    stopping: set[asyncio.Task[None]] = set()

    def on_term() -> None:
        stopping.add(loop.create_task(stop_after_drain()))

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, on_term)
    loop.add_signal_handler(signal.SIGUSR1, state.drain)
    await server.serve()

"""Chromium through Playwright for the browser tests: the system's browser (Debian's
``chromium``, no download), a broker on a real port, console errors collected, and a
screenshot helper."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn

from deskbroker.api.app import create_app
from deskbroker.services.context import BrokerContext
from tests.identity.directories import free_port

CHROMIUM = Path("/usr/bin/chromium")
SIZES = {
    "wide": {"width": 1280, "height": 800},
    "phone": {"width": 390, "height": 844},
}

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")


def need_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: make setup installs Debian's chromium package")


@contextmanager
def live_broker(ctx: BrokerContext, port: int | None = None) -> Iterator[str]:
    """The broker on a loopback port (a free one unless given), in a thread."""
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class Watched:
    """A page whose console errors, page errors and failed requests are kept."""

    page: sync_api.Page
    shots: Path
    errors: list[str] = field(default_factory=list)

    def shoot(self, name: str) -> Path:
        """A full-page screenshot at the page's current size."""
        width = self.page.viewport_size["width"] if self.page.viewport_size else 0
        safe = re.sub(r"[^a-z0-9-]+", "-", name.lower())
        target = self.shots / f"{safe}-{width}.png"
        self.page.screenshot(path=str(target), full_page=True)
        assert target.stat().st_size > 1000
        return target


def watch(page: sync_api.Page, shots: Path) -> Watched:
    watched = Watched(page, shots)

    def on_console(message: sync_api.ConsoleMessage) -> None:
        if message.type in ("error", "warning") and "DevTools" not in message.text:
            where = message.location.get("url", "") if message.location else ""
            watched.errors.append(f"console {message.type}: {message.text} (at {where})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.errors.append(f"page error: {error}"))

    def on_failed(request: sync_api.Request) -> None:
        # ERR_ABORTED is the browser cancelling its own request: the portal's poll still
        # in flight when the test reloads or leaves the page. It says nothing of the
        # broker (whose errors arrive as statuses, above, or as connection failures).
        if request.failure != "net::ERR_ABORTED":
            watched.errors.append(f"request failed: {request.url} {request.failure}")

    page.on("requestfailed", on_failed)

    def off_host(request: sync_api.Request) -> None:
        if not request.url.startswith(("http://127.0.0.1", "blob:", "data:")):
            watched.errors.append(f"request to another host: {request.url}")

    page.on("request", off_host)
    page.on(
        "response",
        lambda response: (
            watched.errors.append(f"{response.status} from {response.url}")
            if response.status >= 400
            else None
        ),
    )
    return watched


@contextmanager
def chromium() -> Iterator[sync_api.Browser]:
    need_chromium()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()

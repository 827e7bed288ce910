"""HTML5 desktops in a real Chromium (Playwright): noVNC shows the real Xvnc desktop,
SSH in the browser runs a command on a real sshd, through the gateway."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deskbroker import xvnc
from deskbroker.bootstrap import add_local_user
from deskbroker.gateway.app import PAGES
from deskbroker.services.context import BrokerContext
from tests.gateway_support import (
    CHROMIUM,
    SSH_PASSWORD,
    SSH_USER,
    PrivateSshd,
    broker_and_gateway,
    chromium_page,
    connect,
    free_port,
    private_sshd,
    user_token,
)
from tests.helpers import USER_PASSWORD, Api
from tests.tools import XVNC, Tool, require

XSETROOT = Tool("xsetroot", "x11-xserver-utils")
# The desktop's background, drawn by xsetroot and looked for in the browser's pixels.
ROOT_COLOUR = (0x33, 0x66, 0xCC)


def _assets() -> None:
    if not (PAGES / "vendor" / "novnc" / "core" / "rfb.js").is_file():
        pytest.fail("viewer assets missing: run `make viewer-assets`", pytrace=False)
    if not Path(CHROMIUM).is_file():
        pytest.fail("chromium not found: run `make setup` (Debian package chromium)", pytrace=False)


@pytest.fixture
def vnc_desktop(api: Api) -> Iterator[dict[str, Any]]:
    require(XVNC, XSETROOT)
    _assets()
    port = free_port("127.0.1.1")
    desktop = xvnc.start("127.0.1.1", port=port, geometry="800x600")
    try:
        subprocess.run(
            [
                "xsetroot",
                "-display",
                f":{desktop.display}",
                "-solid",
                "#{:02x}{:02x}{:02x}".format(*ROOT_COLOUR),
            ],
            check=True,
            timeout=10,
        )
        api.seed_pool(1, users=1, ports={"vnc": port})
        offer = api.login("user0")["offers"][0]
        yield {"id": offer["desktop"]["id"], "port": port, "display": desktop.display}
    finally:
        desktop.stop()


def test_novnc_in_chromium_shows_the_real_desktop(
    ctx: BrokerContext, vnc_desktop: dict[str, Any]
) -> None:
    with broker_and_gateway(ctx) as (broker, _gateway), chromium_page() as page:
        token = user_token(broker, "user0", USER_PASSWORD)
        answer = connect(broker, token, vnc_desktop["id"], "html5-vnc")
        response = page.goto(answer["launch_url"])
        assert response is not None and response.status == 200
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp
        page.wait_for_selector("body[data-state=connected]", timeout=30000)
        # The ticket left the address bar at once.
        assert "ticket" not in page.url
        canvas = page.locator("#screen canvas")
        canvas.wait_for(timeout=5000)
        deadline = time.monotonic() + 10
        while True:
            pixel = page.evaluate(
                """() => {
                    const c = document.querySelector('#screen canvas');
                    const d = c.getContext('2d').getImageData(c.width / 2, c.height / 2, 1, 1).data;
                    return [d[0], d[1], d[2], c.width, c.height];
                }"""
            )
            if tuple(pixel[:3]) == ROOT_COLOUR or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert tuple(pixel[:3]) == ROOT_COLOUR, pixel
        assert (pixel[3], pixel[4]) == (800, 600)
        assert page.foreign == []
        # The same link again: the page says in words that the ticket was used.
        replay = page.context.browser.new_page()
        replay.goto(answer["launch_url"])
        replay.wait_for_selector("body[data-state=disconnected]", timeout=30000)
        assert replay.locator("#status").inner_text() == (
            "Refused by the gateway: the ticket was used already; connect again from the portal"
        )


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[PrivateSshd]:
    with private_sshd(tmp_path) as running:
        yield running


XMESSAGE = Tool("xmessage", "x11-utils")
# A window drawn on the desktop by xmessage, its text the colour of its background so
# that every pixel inside it is known: looked for in the browser's canvas.
WINDOW_COLOUR = (0xFF, 0x88, 0x00)
WINDOW = (250, 240, 300, 120)  # x, y, width, height on the 800x600 desktop


def _pixel(page: Any, x: int, y: int) -> tuple[int, ...]:
    values = page.evaluate(
        """([x, y]) => {
            const c = document.querySelector('#screen canvas');
            const d = c.getContext('2d').getImageData(x, y, 1, 1).data;
            return [d[0], d[1], d[2]];
        }""",
        [x, y],
    )
    return tuple(values)


def test_the_portal_opens_novnc_on_a_real_window(
    api: Api, ctx: BrokerContext, vnc_desktop: dict[str, Any]
) -> None:
    """A user logs into the portal and presses Connect: the portal asks as a browser, gets
    the HTML5 desktop through the gateway, and noVNC shows the real Xvnc screen with the
    xmessage window where X put it."""
    (xmessage,) = require(XMESSAGE)
    x, y, width, height = WINDOW
    colour = "#{:02x}{:02x}{:02x}".format(*WINDOW_COLOUR)
    window = subprocess.Popen(
        [
            xmessage,
            "-display",
            f":{vnc_desktop['display']}",
            "-geometry",
            f"{width}x{height}+{x}+{y}",
            "-bg",
            colour,
            "-fg",
            colour,
            "deskbroker gateway test",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with broker_and_gateway(ctx) as (broker, gateway), chromium_page() as page:
            page.goto(f"{broker.url}/portal/")
            page.get_by_label("User name").fill("user0")
            page.get_by_label("Password").fill(USER_PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.get_by_role("button", name="Connect to lab-000").click()
            # The portal went on to the gateway's viewer page (the ticket in its fragment,
            # which the page removed from the address bar at once).
            page.wait_for_selector("body[data-state=connected]", timeout=30000)
            assert page.url.startswith(f"{gateway.url}/viewer/vnc.html")
            assert "ticket" not in page.url
            page.locator("#screen canvas").wait_for(timeout=5000)
            centre = (x + width // 2, y + height // 3)
            deadline = time.monotonic() + 15
            while _pixel(page, *centre) != WINDOW_COLOUR and time.monotonic() < deadline:
                time.sleep(0.2)
            # Inside the window: its colour; outside it, the desktop's own.
            assert _pixel(page, *centre) == WINDOW_COLOUR
            assert _pixel(page, x + 10, y + 10) == WINDOW_COLOUR
            assert _pixel(page, x - 20, y + height // 2) == ROOT_COLOUR
            assert _pixel(page, x + width // 2, y + height + 20) == ROOT_COLOUR
            assert _pixel(page, 20, 20) == ROOT_COLOUR
            assert page.foreign == []
        # The connect was a browser's: the event says so, through the gateway.
        connected = api.get("events?kind=connect")["items"]
        assert [(e["detail"]["protocol"], e["detail"]["route"]) for e in connected] == [
            ("html5-vnc", "gateway")
        ]
    finally:
        window.terminate()
        window.wait(timeout=10)


def test_ssh_in_chromium_runs_a_command(api: Api, ctx: BrokerContext, sshd: PrivateSshd) -> None:
    _assets()
    api.seed_pool(1, ports={"ssh": sshd.port})
    add_local_user(ctx, SSH_USER, SSH_PASSWORD)
    desktop = api.login(SSH_USER, SSH_PASSWORD)["offers"][0]["desktop"]["id"]
    # The desktop's host key, given by the administrator: the gateway checks it.
    api.patch(f"desktops/{desktop}", {"ssh_host_keys": [sshd.host_key]})
    with broker_and_gateway(ctx) as (broker, gateway), chromium_page() as page:
        token = user_token(broker, SSH_USER, SSH_PASSWORD)
        answer = connect(broker, token, desktop, "html5-ssh")
        assert answer["launch_url"].startswith(f"{gateway.url}/viewer/ssh.html#ticket=")
        page.goto(answer["launch_url"])
        rows = page.locator(".xterm-rows")
        rows.get_by_text(f"{SSH_USER}@lab-000's password:").wait_for(timeout=30000)
        page.locator(".xterm-helper-textarea").focus()
        page.keyboard.type(SSH_PASSWORD)
        page.keyboard.press("Enter")
        rows.get_by_text("$").first.wait_for(timeout=30000)
        page.keyboard.type("echo gateway-$((6*7))-ok; whoami")
        page.keyboard.press("Enter")
        rows.get_by_text("gateway-42-ok").wait_for(timeout=30000)
        text = rows.inner_text()
        assert f"\n{SSH_USER}" in text or text.strip().endswith(SSH_USER) or SSH_USER in text
        # The password was never shown in the page.
        assert SSH_PASSWORD not in text
        assert page.foreign == []

"""RDP through the gateway's port forward: the real ``xfreerdp`` opens the broker's .rdp
file, reaches a private ``xrdp`` through the gateway and logs into the desktop behind it.

xrdp runs here without its session manager: its ``libvnc`` module logs into an Xvnc
desktop with the password the RDP client sends (the desktop's VncAuth password), so no
PAM, no system user and no Xorg are needed, and a wrong password fails the login."""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deskbroker import xvnc
from deskbroker.services.context import BrokerContext
from tests.gateway_support import broker_and_gateway, connect, free_port, user_token
from tests.helpers import USER_PASSWORD, Api, wait_until
from tests.tools import VNCPASSWD, XVNC, Tool, require

XRDP = Tool("/usr/sbin/xrdp", "xrdp")
XFREERDP = Tool("xfreerdp", "freerdp2-x11")
XWD = Tool("xwd", "x11-apps")
XSETROOT = Tool("xsetroot", "x11-xserver-utils")
DESKTOP_PASSWORD = "rdp-desk-pw"
COLOUR = (0x33, 0x66, 0xCC)


def _pixel(display: int, x: int, y: int) -> tuple[int, int, int]:
    """One pixel of an X display, read from ``xwd``'s dump (32 bits per pixel)."""
    dump = subprocess.run(
        ["xwd", "-root", "-silent", "-display", f":{display}"], capture_output=True, check=True
    ).stdout
    fields = struct.unpack(">25I", dump[:100])
    header, order, bpp, per_line = fields[0], fields[7], fields[11], fields[12]
    masks, ncolors = fields[14:17], fields[19]
    assert bpp == 32, f"xwd gave {bpp} bits per pixel"
    offset = header + 12 * ncolors + y * per_line + x * 4
    value = struct.unpack("<I" if order == 0 else ">I", dump[offset : offset + 4])[0]

    def channel(mask: int) -> int:
        shift = (mask & -mask).bit_length() - 1
        return (value & mask) >> shift

    red, green, blue = (channel(m) for m in masks)
    return red, green, blue


@pytest.fixture
def rdp_desktop(api: Api, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """An Xvnc desktop (VncAuth) behind a private xrdp on 127.0.1.1."""
    xrdp_path, *_ = require(XRDP, XFREERDP, XWD, XSETROOT, XVNC, VNCPASSWD)
    password_file = xvnc.write_password_file(tmp_path / "vncpw", DESKTOP_PASSWORD)
    vnc_port, rdp_port = free_port("127.0.1.1"), free_port("127.0.1.1")
    desktop = xvnc.start(
        "127.0.1.1", port=vnc_port, password_file=password_file, geometry="800x600"
    )
    log = tmp_path / "xrdp.log"
    config = tmp_path / "xrdp.ini"
    config.write_text(
        "[Globals]\nini_version=1\nfork=false\n"
        f"port=tcp://127.0.1.1:{rdp_port}\n"
        "security_layer=tls\ncrypt_level=high\n"
        "certificate=/etc/xrdp/cert.pem\nkey_file=/etc/xrdp/key.pem\n"
        "ssl_protocols=TLSv1.2, TLSv1.3\nautorun=desk\nmax_bpp=24\nallow_channels=true\n"
        f"[Logging]\nLogFile={log}\nLogLevel=INFO\nEnableSyslog=false\n"
        # The RDP client's password is the VNC desktop's: a wrong one is refused by Xvnc.
        f"[desk]\nname=desk\nlib=libvnc.so\nip=127.0.1.1\nport={vnc_port}\n"
        "username=na\npassword=ask\n"
    )
    Path("/run/xrdp").mkdir(exist_ok=True)
    server = subprocess.Popen(
        [xrdp_path, "-n", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    viewer_display = xvnc.start("127.0.1.1", port=free_port("127.0.1.1"), geometry="1024x768")
    try:
        subprocess.run(
            [
                "xsetroot",
                "-display",
                f":{desktop.display}",
                "-solid",
                "#{:02x}{:02x}{:02x}".format(*COLOUR),
            ],
            check=True,
            timeout=10,
        )
        xvnc.wait_for_port("127.0.1.1", rdp_port)
        api.seed_pool(1, users=1, address_base="127.0.1.", ports={"rdp": rdp_port})
        offer = api.login("user0")["offers"][0]
        yield {
            "id": offer["desktop"]["id"],
            "log": log,
            "viewer_display": viewer_display.display,
            "tmp": tmp_path,
        }
    finally:
        server.terminate()
        server.wait(timeout=10)
        viewer_display.stop()
        desktop.stop()


def test_xfreerdp_logs_into_xrdp_through_the_gateway(
    api: Api, ctx: BrokerContext, rdp_desktop: dict[str, Any]
) -> None:
    with broker_and_gateway(ctx) as (broker, _gateway):
        token = user_token(broker, "user0", USER_PASSWORD)
        answer = connect(broker, token, rdp_desktop["id"], "rdp")
        # The broker's .rdp file points at the gateway's forward, not at the desktop.
        assert answer["route"] == "gateway"
        assert f"full address:s:127.0.0.1:{answer['port']}\r\n" in answer["content"]
        rdp_file = rdp_desktop["tmp"] / answer["filename"]
        rdp_file.write_text(answer["content"])
        viewer_log = rdp_desktop["tmp"] / "xfreerdp.log"
        with viewer_log.open("wb") as viewer_out:
            viewer = subprocess.Popen(
                [
                    "xfreerdp",
                    str(rdp_file),
                    f"/p:{DESKTOP_PASSWORD}",
                    "/cert:ignore",
                    "/sec:tls",
                    "/size:800x600",
                    "/bpp:24",
                    "-grab-keyboard",
                ],
                env={
                    "DISPLAY": f":{rdp_desktop['viewer_display']}",
                    "HOME": str(rdp_desktop["tmp"]),
                },
                stdout=viewer_out,
                stderr=subprocess.STDOUT,
            )
        pixels: list[tuple[int, int, int]] = []

        def xrdp_log() -> str:
            log: Path = rdp_desktop["log"]
            return log.read_text() if log.exists() else ""

        def what_was_seen() -> str:
            tail = viewer_log.read_text(errors="replace")[-1500:]
            return (
                f"the desktop's colour in the viewer; last pixels {pixels[-3:]}, "
                f"xrdp log ends {xrdp_log()[-800:]!r}, xfreerdp said {tail!r}"
            )

        def desktop_shown() -> bool:
            assert viewer.poll() is None, (
                f"xfreerdp ended before the desktop showed: {what_was_seen()}"
            )
            if "VNC connection complete, connected ok" not in xrdp_log():
                return False
            pixels.append(_pixel(rdp_desktop["viewer_display"], 400, 300))
            return pixels[-1] == COLOUR

        try:
            # xrdp logs into the desktop with the password, and the desktop's picture
            # reaches the viewer's window through the gateway. On a loaded machine the TLS
            # handshakes and the first full frame take a while: the deadline only matters
            # when the picture never comes.
            wait_until(desktop_shown, what_was_seen, timeout_s=90, interval_s=0.3)
        finally:
            viewer.terminate()
            viewer.wait(timeout=10)
        closed = wait_until(
            lambda: api.get("events?kind=gateway.close")["items"],
            "the gateway.close event",
            timeout_s=30,
            interval_s=0.1,
        )
        assert closed[0]["detail"]["kind"] == "forward"
        assert sum(e["detail"]["bytes_down"] for e in closed) > 10_000

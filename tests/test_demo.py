"""The demo, end to end: real Xvnc desktops behind a static center."""

from __future__ import annotations

import subprocess
import sys

from deskbroker import xvnc
from tests.tools import VNCPASSWD, XVNC, require


def test_demo_selftest_passes() -> None:
    require(XVNC, VNCPASSWD)
    result = subprocess.run(
        [sys.executable, "-m", "deskbroker.cli", "demo", "--selftest", "--desktops", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Both the static machine and the OpenStack instance answered as VNC servers.
    assert "demo-desktop-1's VNC server answered 'RFB 003.008'" in result.stdout
    assert "demo-vm-01's VNC server answered 'RFB 003.008'" in result.stdout


def test_selftest_names_the_reason_when_the_broker_is_absent() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "deskbroker.cli",
            "demo",
            "--selftest",
            "--url",
            "http://127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "does not answer" in result.stdout


def test_xvnc_banner_and_stop(tmp_path: object) -> None:
    require(XVNC)
    desktop = xvnc.start("127.0.0.77", port=5999)
    try:
        assert xvnc.read_banner("127.0.0.77", 5999).startswith("RFB 003.")
    finally:
        desktop.stop()
    assert desktop.process.poll() is not None

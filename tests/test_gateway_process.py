"""`deskbroker gateway` as a process: its configuration refused in words, drain on SIGUSR1,
a draining stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from tests.gateway_support import GATEWAY_KEY, free_port, free_range
from tests.helpers import wait_until


def _env(**extra: str) -> dict[str, str]:
    low, high = free_range(5)
    env = {
        **os.environ,
        "DESKBROKER_GATEWAY_KEY": GATEWAY_KEY,
        "DESKBROKER_GATEWAY_FORWARD_PORTS": f"{low}-{high}",
        "DESKBROKER_GATEWAY_CONFIG": "/nonexistent/gateway.conf",
    }
    env.update(extra)
    return env


def test_a_weak_key_or_bad_range_is_refused_in_words() -> None:
    for name, value, words in (
        ("DESKBROKER_GATEWAY_KEY", "short", "DESKBROKER_GATEWAY_KEY is too weak"),
        ("DESKBROKER_GATEWAY_FORWARD_PORTS", "9-1", "not a port range"),
        ("DESKBROKER_GATEWAY_GUACD", "nohost", "not host:port"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "deskbroker.cli", "gateway"],
            env=_env(**{name: value}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert words in " ".join(result.stdout.split()), result.stdout


def test_sigusr1_drains_and_sigterm_stops() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "deskbroker.cli", "gateway", "--port", str(port)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}/healthz"

        def answered() -> httpx.Response | None:
            try:
                return httpx.get(url, timeout=2)
            except httpx.HTTPError:
                assert process.poll() is None, "the gateway exited"
                return None

        health = wait_until(answered, "the gateway's /healthz", timeout_s=30, interval_s=0.1)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        process.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        health = httpx.get(url, timeout=2)
        assert health.status_code == 503 and health.json()["status"] == "draining"
        # Nothing open: SIGTERM ends it at once.
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

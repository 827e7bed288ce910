"""A real broker over HTTP on 127.0.0.1 for the CLI tests, and a fake viewer program.

The fake viewer is the boundary: a program on PATH named like a real viewer that records
its command line and the launch file it was given, and, for VNC, reads the RFB banner
of the server it was pointed at (so the test sees the real desktop answer).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from deskbroker.api.app import create_app
from deskbroker.services.context import BrokerContext
from tests.helpers import wait_until

FAKE_VIEWER = """#!{python}
import json, os, socket, sys, time
record = {{"argv": sys.argv, "files": {{}}, "banner": None}}
for arg in sys.argv[1:]:
    if os.path.isfile(arg):
        with open(arg, encoding="utf-8", newline="") as handle:
            record["files"][arg] = handle.read()
    if "::" in arg:
        host, port = arg.rsplit("::", 1)
        # A desktop just started may take a moment to listen, as a booting one does.
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as c:
                    record["banner"] = c.recv(12).decode("ascii", "replace").strip()
                break
            except OSError as exc:
                record["banner"] = "error: " + str(exc)
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
with open(os.environ["FAKE_VIEWER_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps(record) + "\\n")
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def live_broker(ctx: BrokerContext) -> Iterator[str]:
    """The broker's app served by uvicorn on a free loopback port, in a thread."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(ctx),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            proxy_headers=False,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def started() -> bool:
        assert thread.is_alive(), "the broker's server thread ended before it started"
        return bool(server.started)

    wait_until(started, "the broker to start", interval_s=0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def install_fake_viewers(directory: Path, *programs: str) -> Path:
    """Fake viewer programs in ``directory``; returns the log they append to."""
    directory.mkdir(parents=True, exist_ok=True)
    for program in programs:
        path = directory / program
        path.write_text(FAKE_VIEWER.format(python=sys.executable))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return directory / "viewer-log.jsonl"


def viewer_runs(log: Path, count: int = 1, timeout_s: float = 15.0) -> list[dict[str, Any]]:
    """The fake viewers' records, once ``count`` have run (they start detached)."""

    def runs() -> list[dict[str, Any]]:
        if not log.exists():
            return []
        lines = [json.loads(line) for line in log.read_text().splitlines() if line]
        return lines if len(lines) >= count else []

    return wait_until(runs, f"the viewer to run {count} time(s)", timeout_s=timeout_s)


def client_env(home: Path, bin_dir: Path, *, system_path: bool = False) -> dict[str, str]:
    """A user's environment: config and cache under ``home``, viewers from ``bin_dir``."""
    path = str(bin_dir) + (os.pathsep + os.environ.get("PATH", "") if system_path else "")
    return {
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "DESKBROKER_TOKEN_FILE": "",
        "DESKBROKER_CLIENT_CONFIG": "",
        "PATH": path,
        "FAKE_VIEWER_LOG": str(bin_dir / "viewer-log.jsonl"),
        "COLUMNS": "200",
    }

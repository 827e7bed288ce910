"""A node's processes end with it: a stop is not held for ever by a request stuck on a
silent client, and a worker whose node died before it started stops instead of answering
on a node that has no engine or heartbeat. Each test runs real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from deskbroker.api.worker import NODE_PID_VARIABLE
from tests.broker_process import start_node

SECRET = "test-secret-" + uuid.uuid4().hex


def test_a_stop_closes_a_request_stuck_on_a_silent_client_after_the_grace(
    tmp_path: Path, sqlite_url: str
) -> None:
    node = start_node(
        tmp_path,
        database_url=sqlite_url,
        secret_key=SECRET,
        env={"DESKBROKER_SHUTDOWN_GRACE_S": "2"},
    )
    try:
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as stuck:
            # A login that announced its body and never sends it: the request is under
            # way in the app, waiting, as behind a client that went silent.
            stuck.sendall(
                b"POST /api/v1/auth/login HTTP/1.1\r\nHost: broker\r\n"
                b"Content-Type: application/json\r\nContent-Length: 64\r\n\r\n"
            )
            time.sleep(0.5)
            assert node.proc.poll() is None
            began = time.monotonic()
            os.killpg(node.proc.pid, signal.SIGTERM)
            # uvicorn's default grace is for ever: the node would still be here when the
            # test gives up.
            node.proc.wait(timeout=15)
            took = time.monotonic() - began
        assert took >= 1.5, f"the request under way got no grace ({took:.1f} s)"
        assert took < 10, f"the stop took {took:.1f} s with a grace of 2 s"
    finally:
        node.stop()


def test_a_worker_whose_node_is_gone_stops_instead_of_serving() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    started = subprocess.run(
        [sys.executable, "-c", "from deskbroker.api.worker import app; app()"],
        env={**os.environ, NODE_PID_VARIABLE: str(gone.pid), "DESKBROKER_SECRET_KEY": SECRET},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 1, started.stderr
    assert f"the node (pid {gone.pid}) is gone: this worker stops" in started.stderr

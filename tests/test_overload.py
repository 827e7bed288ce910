"""Overload is answered, never dropped: a worker past its limit of requests at once
answers 503 with Retry-After, and an idle connection outlives the clients' reuse of it
(uvicorn's 5 s keep-alive closed connections clients were about to reuse: httpx.ReadError
under the login benchmark). Each test runs ``deskbroker serve`` as a real process."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.broker_process import BrokerNode, running_node

SECRET = "test-secret-" + uuid.uuid4().hex


def _request(path: str, *, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: broker\r\n{extra}\r\n".encode()


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response off ``sock`` (status, headers, body); status 0 when the
    server closed the connection without answering."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, {}, data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _connect(node: BrokerNode) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    return sock


@pytest.fixture
def node(tmp_path: Path, sqlite_url: str) -> Iterator[BrokerNode]:
    with running_node(
        tmp_path,
        database_url=sqlite_url,
        secret_key=SECRET,
        env={"DESKBROKER_MAX_REQUESTS_IN_FLIGHT": "3"},
    ) as started:
        yield started


def test_an_idle_connection_is_still_open_after_uvicorns_five_seconds(node: BrokerNode) -> None:
    with _connect(node) as sock:
        sock.sendall(_request("/healthz"))
        assert _read_response(sock)[0] == 200
        # Past uvicorn's default of 5 s, which closed the connection under the client
        # that reused it a moment later.
        time.sleep(6.0)
        sock.sendall(_request("/healthz"))
        status, _, body = _read_response(sock)
        assert status == 200, f"the idle connection was closed: {body!r}"


def test_past_the_limit_a_request_gets_503_with_retry_after_not_a_dropped_connection(
    node: BrokerNode,
) -> None:
    held: list[socket.socket] = []
    body = json.dumps({"username": "nobody", "password": "not-the-password"}).encode()
    try:
        # Three requests in flight: each announced a body and sent none, so the broker
        # waits on them, as on clients of a slow network.
        for _ in range(3):
            sock = _connect(node)
            sock.sendall(
                _request(
                    "/api/v1/auth/login",
                    method="POST",
                    extra=f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n",
                )
            )
            held.append(sock)
        time.sleep(0.3)  # the three are in the app, waiting on their bodies
        refused = httpx.get(f"{node.url}/readyz", timeout=5)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["content-type"] == "application/problem+json"
        problem = refused.json()
        assert "limit of 3 requests at once" in problem["detail"], problem
        # Liveness still answers: an orchestrator must not restart a busy node.
        assert httpx.get(f"{node.url}/healthz", timeout=5).status_code == 200
        # One held request ends (its client hangs up): its place is free again.
        held.pop().close()
        time.sleep(0.3)
        answered = httpx.get(f"{node.url}/readyz", timeout=5)
        assert answered.status_code == 200, answered.text
        # A held request whose body comes is served as usual (401: unknown user).
        held[0].sendall(body)
        status, _, answer = _read_response(held[0])
        assert status == 401, answer
    finally:
        for sock in held:
            sock.close()


def test_sqlite_refuses_several_workers_in_words(tmp_path: Path, sqlite_url: str) -> None:
    with (
        pytest.raises(RuntimeError) as refused,
        running_node(tmp_path, database_url=sqlite_url, secret_key=SECRET, args=("--workers", "2")),
    ):
        pass
    said = " ".join(str(refused.value).split())  # the console wraps its lines
    assert "exited with 2" in said
    assert "SQLite has one writer at a time" in said
    assert "move to PostgreSQL" in said

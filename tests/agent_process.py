"""The desktop agent as a real process, a real VNC viewer, and a broker on a real port."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from deskbroker.api.app import create_app
from deskbroker.services.context import BrokerContext
from tests.helpers import wait_until
from tests.identity.directories import free_port

SRC = Path(__file__).resolve().parents[1] / "src"


class LiveBroker:
    """The broker's app served by uvicorn on a fixed port; stops and starts again."""

    def __init__(self, ctx: BrokerContext, port: int | None = None) -> None:
        self.ctx = ctx
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> LiveBroker:
        config = uvicorn.Config(
            create_app(self.ctx), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_until(
            lambda: self._server is not None and self._server.started, "the broker", timeout_s=15
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)
        self._server = self._thread = None


@dataclass
class AgentProcess:
    """``python -m deskbroker_agent`` with its own config file and state directory."""

    directory: Path
    settings: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_path = self.directory / "agent.log"
        self.settings.setdefault("state_dir", str(self.directory / "state"))

    @property
    def state(self) -> Path:
        return Path(self.settings["state_dir"])

    def start(self) -> AgentProcess:
        config = self.directory / "agent.conf"
        lines = ["[agent]", *(f"{k} = {v}" for k, v in self.settings.items())]
        config.write_text("\n".join(lines) + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DESKBROKER_AGENT_")} | {
            "PYTHONPATH": str(SRC)
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "deskbroker_agent", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def queued(self) -> int:
        return len(list((self.state / "queue").glob("*.json")))


class Viewer:
    """A VNC viewer speaking RFB 3.8 (security type None), shared session."""

    def __init__(self, address: str, port: int = 5900, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(
            (address, port), timeout=10, source_address=(source, 0)
        )
        assert self.sock.recv(12).startswith(b"RFB 003.")
        self.sock.sendall(b"RFB 003.008\n")
        count = self.sock.recv(1)[0]
        offered = self.sock.recv(count)
        assert 1 in offered, f"the desktop wants a password: {list(offered)}"
        self.sock.sendall(b"\x01")
        assert self.sock.recv(4) == b"\x00\x00\x00\x00"
        self.sock.sendall(b"\x01")  # ClientInit: shared
        header = self._exactly(24)
        name_length = struct.unpack(">I", header[20:24])[0]
        self.name = self._exactly(name_length).decode()
        self.x = 0

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the desktop closed the connection")
            data += chunk
        return data

    def move(self) -> None:
        """Move the pointer: input that resets the X server's idle time."""
        self.x = (self.x + 7) % 200
        self.sock.sendall(struct.pack(">BBHH", 5, 0, self.x + 10, self.x + 10))

    def close(self) -> None:
        self.sock.close()

"""govmomi's vCenter simulator on 127.0.0.1, for the vSphere tests.

``make setup`` builds it (``tests/vsphere/vcsim/main.go``, into ``build/vcsim``). It
listens on a free port, prints its URL and the file of its CA certificate, and makes one
datacenter with a cluster, datastores, powered-on VMs and templates (``template-0`` with
a snapshot, for linked clones; ``template-1`` without). It stops when its standard input
closes.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

BINARY = Path(__file__).resolve().parents[2] / "build" / "vcsim"
USER, PASSWORD = "user", "pass"  # the simulator takes any; a real vCenter would not


@dataclass(frozen=True)
class Vcsim:
    host: str
    port: int
    ca_pem: str

    def params(self, **extra: Any) -> dict[str, Any]:
        """A vSphere center's params for this simulator, verifying its certificate."""
        return {
            "host": self.host,
            "port": self.port,
            "username": USER,
            "ca_pem": self.ca_pem,
            "min_free_gb": 0,
            "timeout_s": 30,
            **extra,
        }


@contextmanager
def running(*flags: str) -> Iterator[Vcsim]:
    """One simulator, stopped (and waited for) on the way out."""
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run `make setup` (it builds the vCenter simulator)")
    proc = subprocess.Popen(
        [str(BINARY), "-listen", "127.0.0.1:0", *flags],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line: list[str] = []
        # The first line says where it listens; a simulator that never says is killed.
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(60)
        if not line or not line[0]:
            pytest.fail("the vCenter simulator did not start")
        said = json.loads(line[0])
        url = urlsplit(said["url"])
        assert url.hostname and url.port
        yield Vcsim(url.hostname, url.port, Path(said["ca_file"]).read_text())
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

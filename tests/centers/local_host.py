"""A session host for the local center's tests: a state directory every session user
can reach, free ports and displays, and a real VNC client's handshake (RFB 3.8 version
exchange and VNC authentication) to prove a desktop asks for, and takes, its password."""

from __future__ import annotations

import os
import random
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from deskbroker.centers.local import LocalCenter
from deskbroker.centers.registry import open_driver

VNC_PASSWORD = "s3cret-9"
# The test's session: a real X client, so it only stays up while its display is.
SESSION = ["xlogo"]


def session_user() -> str | None:
    """Sessions drop to ``nobody`` when the tests run as root (as in CI), else run as us."""
    return "nobody" if os.geteuid() == 0 else None


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports on 127.0.0.1 (other engineers'
    tests share the machine: start from a random place and check each)."""
    for _ in range(200):
        # Below Linux's ephemeral range (32768 up): a desktop restarts on its port, and
        # an outgoing connection of any process could take one from that range between.
        first = random.randint(20000, 32000)
        if all(_free(first + k) for k in range(count)):
            return first
    raise RuntimeError("no run of free ports found")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_displays(count: int) -> int:
    for _ in range(200):
        first = random.randint(300, 8000)
        if not any(Path(f"/tmp/.X{first + k}-lock").exists() for k in range(count)):
            return first
    raise RuntimeError("no run of free displays found")


def state_dir() -> Iterator[Path]:
    """A directory under /tmp itself (pytest's own is root's alone): the session user
    must traverse to its password file."""
    made = Path(tempfile.mkdtemp(prefix="deskbroker-local-"))
    made.chmod(0o711)
    yield made / "state"
    shutil.rmtree(made, ignore_errors=True)


def center_params(directory: Path, slots: int = 3, **more: Any) -> dict[str, Any]:
    return {
        "state_dir": str(directory),
        "address": "127.0.0.1",
        "first_display": free_displays(slots),
        "first_port": free_ports(slots),
        "max_desktops": slots,
        "session_command": SESSION,
        "session_user": session_user(),
        "geometry": "800x600",
        **more,
    }


def open_local(directory: Path, **more: Any) -> LocalCenter:
    driver = open_driver("local", center_params(directory, **more), {"vnc_password": VNC_PASSWORD})
    assert isinstance(driver, LocalCenter)
    return driver


def stop_all(driver: LocalCenter) -> None:
    """End every desktop the test made: no Xvnc outlives its test."""
    for machine in driver.inventory():
        driver.terminate(machine)


def _recv(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"the server closed after {data!r}")
        data += chunk
    return data


def _vnc_key(password: str) -> bytes:
    # VNC authentication uses DES with the password's bytes bit-reversed, 8 at most.
    raw = password.encode("latin-1")[:8].ljust(8, b"\0")
    return bytes(int(f"{b:08b}"[::-1], 2) for b in raw)


def vnc_login(address: str, port: int, password: str) -> tuple[bytes, list[int], int]:
    """A VNC client's handshake: returns the server's banner, its security types and
    the SecurityResult (0: the password was taken)."""
    with socket.create_connection((address, port), timeout=10) as sock:
        banner = _recv(sock, 12)
        sock.sendall(b"RFB 003.008\n")
        count = _recv(sock, 1)[0]
        if count == 0:
            length = int.from_bytes(_recv(sock, 4), "big")
            raise AssertionError(f"the desktop refused: {_recv(sock, length)!r}")
        types = list(_recv(sock, count))
        if 2 not in types:
            return banner, types, -1
        sock.sendall(bytes([2]))
        challenge = _recv(sock, 16)
        # Single DES: triple DES with one key three times (cryptography has no DES).
        cipher = Cipher(TripleDES(_vnc_key(password) * 3), modes.ECB())  # noqa: S305 - the RFB protocol's own
        encryptor = cipher.encryptor()
        sock.sendall(encryptor.update(challenge) + encryptor.finalize())
        result = int.from_bytes(_recv(sock, 4), "big")
        return banner, types, result

"""A real, private ypserv for the NIS tests, with maps built by makedbm.

ypserv has fixed paths it will not be talked out of: it refuses to start without a
portmapper (rpcbind) to register with, it locks ``/run/ypserv.pid`` (one ypserv per
machine), and it reads ``/etc/ypserv.conf`` and ``/var/yp/securenets``. So each site
runs in a private mount namespace (``unshare --mount``, which needs root) in which a
directory of the test is mounted over ``/run`` and over ``/var/yp``, and its own
``ypserv.conf`` over ``/etc/ypserv.conf``. Its rpcbind runs there too, inside a
network namespace of its own: port 111 is then bound on nobody's network, while
ypserv still registers through the unix socket ``/run/rpcbind.sock`` (the test's
directory, so the test can reach that socket). ypserv itself runs as ``nobody`` (with
only CAP_NET_BIND_SERVICE, which its IPv6 socket setup asks for) on a free port.

ypserv binds its port on every address and has no option to bind one; securenets
limits who it answers to 127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import tools
from tests.identity.directories import free_port, wait_for_port
from tests.tools import require

NIS_DOMAIN = "deskbroker.test"

# Everything but the shadow map for anyone on loopback; shadow only from ports < 1024.
YPSERV_CONF = """files: 30
xfr_check_port: yes
* : * : shadow.byname : port
* : * : * : none
"""
SECURENETS = "255.0.0.0 127.0.0.0\n"

# $1 the site's directory, $2 ypserv's port. Runs in a fresh mount namespace.
LAUNCH = r"""
set -eu
mount --bind "$1/run" /run
mount --bind "$1/yp" /var/yp
mount --bind "$1/ypserv.conf" /etc/ypserv.conf
mkdir -p /run/rpcbind && chown _rpc /run/rpcbind
unshare --net rpcbind -f & rpcbind=$!
i=0; while [ ! -S /run/rpcbind.sock ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
setpriv --reuid=nobody --regid=nogroup --clear-groups \
  --inh-caps=+net_bind_service --ambient-caps=+net_bind_service \
  ypserv -d /var/yp -p "$2" -f & ypserv=$!
trap 'kill $ypserv $rpcbind 2>/dev/null; wait' TERM INT
wait
"""


def mkpasswd(password: str, method: str) -> str:
    """A crypt(3) hash made by another implementation than the broker's."""
    if method in ("sha512crypt", "md5crypt"):
        flag = {"sha512crypt": "-6", "md5crypt": "-1"}[method]
        done = subprocess.run(
            ["openssl", "passwd", flag, "-stdin"],
            input=password,
            capture_output=True,
            text=True,
            check=True,
        )
    else:
        done = subprocess.run(
            ["mkpasswd", f"--method={method}", "--stdin"],
            input=password,
            capture_output=True,
            text=True,
            check=True,
        )
    return done.stdout.strip()


@dataclass
class NisSite:
    """One ypserv (and its rpcbind) serving ``domain`` from ``directory``."""

    directory: Path
    domain: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    maps: dict[str, list[str]] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def rpcbind_socket(self) -> Path:
        return self.directory / "run" / "rpcbind.sock"

    def write_map(self, name: str, lines: list[str], key_field: int = 0) -> None:
        """``name`` built by makedbm from colon-separated lines, keyed by one field."""
        self.maps[name] = lines
        source = self.directory / "src" / name
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("".join(f"{line.split(':')[key_field]}\t{line}\n" for line in lines))
        target = self.directory / "yp" / self.domain / name
        target.parent.mkdir(parents=True, exist_ok=True)
        [makedbm] = require(tools.MAKEDBM)
        subprocess.run(
            [makedbm, "-i", str(source), "-m", "localhost", str(source), str(target)],
            check=True,
            capture_output=True,
        )
        target.chmod(0o644)

    def start(self) -> None:
        if os.geteuid() != 0:
            pytest.fail(
                "the NIS tests start ypserv in a private mount namespace, which needs root",
                pytrace=False,
            )
        require(tools.YPSERV, tools.RPCBIND, tools.UNSHARE, tools.SETPRIV, tools.MAKEDBM)
        run = self.directory / "run"
        run.mkdir(exist_ok=True)
        run.chmod(0o777)  # ypserv, as nobody, writes its pid file there
        (self.directory / "yp" / self.domain).mkdir(parents=True, exist_ok=True)
        (self.directory / "yp" / "securenets").write_text(SECURENETS)
        for path in (self.directory / "yp", self.directory / "yp" / self.domain):
            path.chmod(0o755)
        (self.directory / "ypserv.conf").write_text(YPSERV_CONF)
        log = self.directory / "site.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    LAUNCH,
                    "nis-site",
                    str(self.directory),
                    str(self.port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as one
            )
        wait_for_port(self.port, 10, self.proc, log)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@contextlib.contextmanager
def running_nis(directory: Path, users: list[str], groups: list[str]) -> Iterator[NisSite]:
    """A site whose passwd, shadow and group maps hold ``users`` and ``groups``.

    ``users`` are ``passwd`` lines; a line with a ninth and further fields (shadow's
    lastchg, min, max, warn, inactive, expire) goes to the shadow map with the hash,
    and its passwd line says ``x``.
    """
    site = NisSite(directory, NIS_DOMAIN, free_port())
    passwd, shadow = [], []
    for line in users:
        fields = line.split(":")
        if len(fields) > 7:
            shadow.append(":".join([fields[0], fields[1], *fields[7:]]))
            fields = [fields[0], "x", *fields[2:7]]
        passwd.append(":".join(fields))
    site.write_map("passwd.byname", passwd)
    site.write_map("passwd.byuid", passwd, key_field=2)
    site.write_map("shadow.byname", shadow)
    site.write_map("group.byname", groups)
    site.write_map("group.bygid", groups, key_field=2)
    site.start()
    try:
        yield site
    finally:
        site.stop()


@contextlib.contextmanager
def unix_relay(path: Path) -> Iterator[int]:
    """A TCP port on 127.0.0.1 whose connections are carried to the unix socket ``path``.

    It lets a test reach the site's rpcbind, whose port 111 is on no reachable network.
    It copies bytes and nothing else."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stopping = threading.Event()

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def serve() -> None:
        while not stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(str(path))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stopping.set()
        thread.join(timeout=2)
        listener.close()

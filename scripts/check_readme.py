#!/usr/bin/env python3
"""Run the README's tour against a real demo broker, so the documented commands stay true.

Starts ``deskbroker demo`` on a free port in a temporary directory (its data lands in
``.deskbroker/demo`` there, where the tour's ``--data-dir`` expects it), runs every ``sh``
block between the ``tour:start`` and ``tour:end`` markers of README.md in one bash with
``set -euo pipefail`` and ``BROKER`` pointing at the demo, checks the output for what the
tour promises, stops the demo with Ctrl-C as a person would, and finally runs the
stand-alone ``deskbroker demo --selftest``::

    .venv/bin/python scripts/check_readme.py
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
# What a reader of the tour is told they will see.
EXPECTED = (
    '"status":"ready"',
    "self-test passed",
    '"name": "demo-pool"',
    "users waiting",
    '"status": "assigned"',
    "[Connection]",
    "is yours",
    "launch file for demo-",
    "you are number 1 in the queue",
    '"username":"bob"',
    "204",
    "deskbroker_logins_total",
)


def tour_script(readme: str) -> str:
    start = readme.index("<!-- tour:start")
    end = readme.index("<!-- tour:end -->")
    blocks = BLOCK.findall(readme[start:end])
    if not blocks:
        raise SystemExit("README.md has no sh blocks between the tour markers")
    return "set -euo pipefail\nset -x\n" + "\n".join(blocks)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(log: Path, process: subprocess.Popen[bytes], timeout_s: float = 150) -> None:
    """Until the demo says it is serving: it has then seeded and built its cloud pool."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the demo exited with {process.returncode}")
        if log.exists() and "is serving at" in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise SystemExit(f"the demo was not ready after {timeout_s} s")


def stop(process: subprocess.Popen[bytes]) -> list[str]:
    """Ctrl-C, as a person would; the demo must then stop its desktops itself.

    Only the demo's own process group (its own session) is ever signalled.
    """
    problems: list[str] = []
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            problems.append("the demo did not stop within 20 s of Ctrl-C")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    time.sleep(0.5)
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return problems
    problems.append("the demo left processes (Xvnc?) running after Ctrl-C")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the README tour against a demo.")
    parser.add_argument(
        "--no-standalone", action="store_true", help="skip `deskbroker demo --selftest`"
    )
    args = parser.parse_args(argv)
    script = tour_script(README.read_text())
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env = {k: v for k, v in env.items() if not k.startswith("DESKBROKER_")}
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="deskbroker-readme-") as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = Path(tmp) / "demo.log"
        with log.open("wb") as sink:
            demo = subprocess.Popen(
                [str(bin_dir / "deskbroker"), "demo", "--port", str(port)],
                cwd=tmp,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_ready(log, demo)
            result = subprocess.run(
                ["bash", "-c", script],
                cwd=tmp,
                # The tour's `deskbroker connect` keeps its config, token and launch files
                # in the temporary directory, not in the home of whoever runs the check.
                env={
                    **env,
                    "BROKER": url,
                    "XDG_CONFIG_HOME": f"{tmp}/config",
                    "XDG_CACHE_HOME": f"{tmp}/cache",
                },
                capture_output=True,
                text=True,
                timeout=300,
            )
            print(result.stdout)
            print(result.stderr, file=sys.stderr)
            if result.returncode != 0:
                failures.append(f"the tour exited with {result.returncode}")
            for expected in EXPECTED:
                if expected not in result.stdout:
                    failures.append(f"the tour's output lacks {expected!r}")
        finally:
            failures += stop(demo)
            print(log.read_text(errors="replace"), file=sys.stderr)
        if not args.no_standalone:
            selftest = subprocess.run(
                [str(bin_dir / "deskbroker"), "demo", "--selftest"],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            print(selftest.stdout)
            if selftest.returncode != 0 or "self-test passed" not in selftest.stdout:
                failures.append(f"deskbroker demo --selftest failed: {selftest.stdout[-500:]}")
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    if not failures:
        print("README tour: every command ran as documented")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

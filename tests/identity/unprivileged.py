"""Run a snippet of this checkout's code as another, unprivileged user (``nobody``).

A checkout is often unreadable to other users (a clone under /root, a ``mktemp -d``
folder) and so is its virtual environment. What the snippet imports (this checkout's
``deskbroker`` and the third-party packages it pulls in) is therefore copied into a
world-readable temporary directory first, and run by an interpreter that user can execute.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

# Prints, for every module the snippet loaded from outside the standard library, the
# file or package directory to copy: {"top-level name": "path"}.
_PROBE = """
import json, sys, sysconfig
from pathlib import Path
paths = sysconfig.get_paths()
std = {Path(paths[key]).resolve() for key in ("stdlib", "platstdlib")}
# In a virtual environment platstdlib holds site-packages: those are not the stdlib.
sites = {Path(paths[key]).resolve() for key in ("purelib", "platlib")}
found = {}
for name in list(sys.modules):
    top = name.partition(".")[0]
    if top in found or top == "__main__":
        continue
    origin = getattr(sys.modules.get(top), "__file__", None)
    if not origin:
        continue  # built in, or a namespace package
    path = Path(origin).resolve()
    if any(path.is_relative_to(s) for s in std) and not any(
        path.is_relative_to(s) for s in sites
    ):
        continue
    found[top] = str(path.parent if path.name.startswith("__init__.") else path)
print(json.dumps(found))
"""


@dataclass(frozen=True)
class Staged:
    """A world-readable copy of what a snippet imports, and how to run it there."""

    python: str
    directory: Path

    def run(
        self, user: Sequence[str], code: str, *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``code`` under the ``user`` prefix (e.g. ``setpriv --reuid=nobody ...``)."""
        return subprocess.run(
            [*user, self.python, "-s", "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.directory,
            env={
                "PATH": "/usr/bin:/bin",
                "PYTHONPATH": str(self.directory),
                "PYTHONDONTWRITEBYTECODE": "1",
            },
        )


def _world_reachable(path: Path) -> bool:
    """Whether a user in no group of the owner can execute ``path`` (every folder above
    it searchable, the file itself executable)."""
    if not path.is_file() or not path.stat().st_mode & stat.S_IXOTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.parents)


def interpreter() -> str:
    """A Python of this version that any user can execute.

    A virtual environment's interpreter may sit in an unreadable checkout, and its base
    in an unreadable home (pyenv under /root); the system's own is the usual fallback."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        Path(sys.executable).resolve(),
        Path(getattr(sys, "_base_executable", sys.executable)).resolve(),
        Path("/usr/bin", version),
        Path("/usr/local/bin", version),
    ]
    for candidate in candidates:
        if _world_reachable(candidate):
            return str(candidate)
    pytest.fail(
        f"no {version} that other users can run: tried {', '.join(map(str, candidates))}; "
        f"install Debian package {version}-minimal (make setup does)",
        pytrace=False,
    )


def _readable_by_all(root: Path) -> None:
    root.chmod(0o755)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            Path(folder, name).chmod(0o755)
        for name in files:
            path = Path(folder, name)
            path.chmod(0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644)


@contextmanager
def staged(imports: str) -> Iterator[Staged]:
    """Copy what ``imports`` (Python statements) loads into a fresh world-readable folder."""
    probe = subprocess.run(
        [sys.executable, "-c", imports + "\n" + _PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    modules: dict[str, str] = json.loads(probe.stdout)
    assert "deskbroker" in modules, modules
    directory = Path(tempfile.mkdtemp(prefix="deskbroker-unprivileged-"))
    try:
        for top, origin in modules.items():
            source = Path(origin)
            if source.is_dir():
                shutil.copytree(
                    source,
                    directory / source.name,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                )
            else:
                shutil.copy2(source, directory / source.name)
            # Shared libraries a wheel bundles beside its package (auditwheel's ".libs").
            libs = source.parent / f"{top}.libs"
            if libs.is_dir() and not (directory / libs.name).exists():
                shutil.copytree(libs, directory / libs.name)
        _readable_by_all(directory)
        yield Staged(interpreter(), directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

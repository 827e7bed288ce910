"""The outside programs the tests start, and one line that says what to do when one is missing.

Every fixture that starts slapd, Samba, ypserv, the OpenID provider or Xvnc asks here
first, so a machine without ``make setup`` fails with e.g. ``slapd not found: run `make
setup` (installs Debian package slapd)`` instead of a traceback from deep in a fixture.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

_CHECKOUT = Path(__file__).resolve().parent.parent
# Daemons live in sbin, which an ordinary user's PATH often lacks.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


@dataclass(frozen=True)
class Tool:
    """A program a test needs and the Debian package ``make setup`` installs it from."""

    program: str  # a name looked up on PATH (and sbin), or an absolute path
    package: str


SLAPD = Tool("slapd", "slapd")
SAMBA = Tool("samba", "samba-ad-dc")
SAMBA_TOOL = Tool("samba-tool", "samba")
YPSERV = Tool("ypserv", "ypserv")
MAKEDBM = Tool("/usr/lib/yp/makedbm", "ypserv")
RPCBIND = Tool("rpcbind", "rpcbind")
UNSHARE = Tool("unshare", "util-linux")
SETPRIV = Tool("setpriv", "util-linux")
NODE = Tool("node", "nodejs")
XVNC = Tool("Xvnc", "tigervnc-standalone-server")
VNCPASSWD = Tool("vncpasswd", "tigervnc-tools")


def search_path() -> str:
    """PATH, then the sbin folders it lacks."""
    parts = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    return os.pathsep.join([*parts, *(s for s in _SBIN if s not in parts)])


def find(tool: Tool) -> str | None:
    """The program's full path, or None."""
    if os.path.isabs(tool.program):
        path = Path(tool.program)
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(tool.program, path=search_path())


def require(*tools: Tool) -> list[str]:
    """The full paths of ``tools``; fails the test in one line naming the first missing one
    and the package ``make setup`` installs it from (a failure, not a skip: the suite is
    meant to run whole)."""
    found: list[str] = []
    for tool in tools:
        path = find(tool)
        if path is None:
            pytest.fail(missing(tool), pytrace=False)
        found.append(path)
    return found


def missing(tool: Tool) -> str:
    """What a test says when ``tool`` is missing."""
    return f"{tool.program} not found: run `make setup` (installs Debian package {tool.package})"


def require_node_modules(directory: Path, module: str) -> None:
    """Fail in one line when ``npm ci`` has not been run in ``directory``."""
    if not (directory / "node_modules" / module).is_dir():
        where = (
            directory.relative_to(_CHECKOUT) if directory.is_relative_to(_CHECKOUT) else directory
        )
        pytest.fail(
            f"{module} not found in {where}/node_modules: run `make setup` (npm ci in {where})",
            pytrace=False,
        )

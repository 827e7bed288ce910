"""A missing outside program fails a test in one line that says how `make setup` installs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import tools
from tests.isolation_world import real_desktops
from tests.oidc.provider import running_provider

CHECKOUT = Path(__file__).resolve().parent.parent


def _failure(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    # pytest.fail raises Failed; pytrace=False is what keeps the traceback out of the report.
    assert getattr(excinfo.value, "pytrace", True) is False
    return str(excinfo.value)


def test_a_program_off_the_path_fails_in_one_line_naming_its_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: nothing is found
    with pytest.raises(pytest.fail.Exception) as caught:
        tools.require(tools.NODE)
    assert _failure(caught) == ("node not found: run `make setup` (installs Debian package nodejs)")
    with pytest.raises(pytest.fail.Exception) as caught:
        tools.require(tools.XVNC, tools.VNCPASSWD)
    assert _failure(caught).startswith("Xvnc not found: run `make setup`")
    assert "tigervnc-standalone-server" in _failure(caught)


def test_fixtures_ask_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The fixtures that start programs say what is missing, not a FileNotFoundError."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception) as caught, running_provider(tmp_path):
        pass
    assert _failure(caught).startswith("node not found: run `make setup`")
    with pytest.raises(pytest.fail.Exception) as caught, real_desktops(1):
        pass
    assert _failure(caught).startswith("Xvnc not found: run `make setup`")


def test_node_modules_not_installed_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception) as caught:
        tools.require_node_modules(tmp_path, "oidc-provider")
    assert _failure(caught) == (
        f"oidc-provider not found in {tmp_path}/node_modules: run `make setup` "
        f"(npm ci in {tmp_path})"
    )


def test_daemons_in_sbin_are_found_when_the_path_lacks_sbin(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # An ordinary user's PATH has no /usr/sbin, where slapd, ypserv and rpcbind live.
    monkeypatch.setenv("PATH", str(tmp_path))
    [slapd, ypserv, makedbm] = tools.require(tools.SLAPD, tools.YPSERV, tools.MAKEDBM)
    assert os.access(slapd, os.X_OK) and Path(slapd).name == "slapd"
    assert Path(ypserv).parent.name == "sbin" and makedbm == "/usr/lib/yp/makedbm"


def test_the_report_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    case = tmp_path / "test_needs_a_daemon.py"
    case.write_text(
        "from tests import tools\n\n"
        "def test_needs_a_daemon():\n"
        "    tools.require(tools.Tool('deskbroker-no-such-daemon', 'no-such-package'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", str(case)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(CHECKOUT), *sys.path]),
            "COLUMNS": "300",  # the short summary is cut at the terminal's width
        },
    )
    assert done.returncode == 1, done.stdout + done.stderr
    words = (
        "deskbroker-no-such-daemon not found: run `make setup` "
        "(installs Debian package no-such-package)"
    )
    # The failure's section holds that line alone: no traceback, no source listing.
    section = done.stdout.split("_ test_needs_a_daemon _")[1].split("=====")[0]
    assert [line for line in section.splitlines() if line.strip("_ ")] == [words]
    assert f"FAILED test_needs_a_daemon.py::test_needs_a_daemon - Failed: {words}" in done.stdout
    assert "Traceback" not in done.stdout and "tools.require(" not in done.stdout

"""The agent program on its own: standard library only, a zipapp from `make agent`, its
config, its on-disk queue and the tracker that turns snapshots into events."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from deskbroker_agent.config import ConfigError, load
from deskbroker_agent.sources import Seen
from deskbroker_agent.spool import Spool
from deskbroker_agent.tracker import Tracker

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "src" / "deskbroker_agent"


def test_the_agent_imports_only_the_standard_library() -> None:
    outside = []
    for path in AGENT.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "deskbroker_agent":
                    outside.append(f"{path.name}: {name}")
    assert outside == []


def test_make_agent_builds_a_zipapp_with_its_unit(tmp_path: Path) -> None:
    built = subprocess.run(
        ["make", "-s", "agent", f"AGENT_DIST={tmp_path}/dist"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    pyz = tmp_path / "dist" / "deskbroker-agent.pyz"
    # Any python3 runs it, with nothing of the broker installed (isolated mode, -I).
    version = subprocess.run(
        [sys.executable, "-I", str(pyz), "--version"], capture_output=True, text=True, check=False
    )
    assert version.returncode == 0 and version.stdout.strip() == "0.1.0", version
    missing = subprocess.run(
        [sys.executable, "-I", str(pyz)],
        capture_output=True,
        text=True,
        env={"DESKBROKER_AGENT_CONFIG": str(tmp_path / "none.conf")},
        check=False,
    )
    assert missing.returncode == 2 and "broker_url must be" in missing.stderr
    unit = (tmp_path / "dist" / "deskbroker-agent.service").read_text()
    assert "ExecStart=/usr/bin/python3 /usr/local/lib/deskbroker-agent/deskbroker-agent.pyz" in unit
    assert "StateDirectory=deskbroker-agent" in unit
    assert "[agent]" in (tmp_path / "dist" / "deskbroker-agent.conf").read_text()


def test_config_file_and_environment(tmp_path: Path) -> None:
    conf = tmp_path / "agent.conf"
    conf.write_text("[agent]\nbroker_url = http://b:1\nheartbeat_s = 5\n")
    got = load(conf, {"DESKBROKER_AGENT_HEARTBEAT_S": "7", "DESKBROKER_AGENT_X_DISPLAY": ":3"})
    assert (got.broker_url, got.heartbeat_s, got.x_display) == ("http://b:1", 7.0, ":3")
    conf.write_text("[agent]\nbroker_url = http://b:1\ncolour = red\n")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load(conf, {})
    conf.write_text("[agent]\nbroker_url = http://b:1\n")
    with pytest.raises(ConfigError, match="heartbeat_s must be a number"):
        load(conf, {"DESKBROKER_AGENT_HEARTBEAT_S": "soon"})
    with pytest.raises(ConfigError, match="broker_url must be"):
        load(tmp_path / "absent.conf", {})


def test_the_queue_keeps_order_and_numbers_across_restarts(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = [spool.put({"event": e, "user": "u"}) for e in ("login", "disconnect", "reconnect")]
    assert [e["seq"] for e in first] == [1, 2, 3]
    assert len({e["key"] for e in first}) == 3
    path, entry = next(iter(spool.pending()))
    assert entry["event"] == "login"
    spool.done(path)
    # A torn write (a crash mid-file) is never sent; the others keep their order.
    (spool.queue / "000000000099.json").write_text('{"event": "lo')
    again = Spool(tmp_path)
    assert [e["event"] for _, e in again.pending()] == ["disconnect", "reconnect"]
    assert again.put({"event": "logout", "user": "u"})["seq"] == 100  # never goes back
    assert json.loads((tmp_path / "sequence").read_text()) == 100


def test_the_tracker_turns_snapshots_into_events_in_an_order_the_broker_takes(
    tmp_path: Path,
) -> None:
    tracker = Tracker(tmp_path / "sessions.json", idle_threshold_s=60)

    def events(*seen: Seen) -> list[str]:
        return [e["event"] for e in tracker.update(list(seen))]

    assert events(Seen("k", "ann", client_address="10.0.0.9", protocol="vnc")) == ["login"]
    assert events(Seen("k", "ann", idle_s=61)) == ["idle"]
    assert events(Seen("k", "ann", idle_s=61)) == []  # no news, no event
    assert events(Seen("k", "ann", idle_s=1)) == ["active"]
    assert events(Seen("k", "ann", connected=False, idle_s=500)) == ["disconnect"]
    assert events(Seen("k", "ann", locked=True)) == ["reconnect", "lock"]
    assert events(Seen("k", "ann")) == ["unlock"]
    # A restarted agent remembers what it reported: no second login.
    reborn = Tracker(tmp_path / "sessions.json", idle_threshold_s=60)
    assert reborn.update([Seen("k", "ann")]) == []
    assert [e["event"] for e in reborn.update([])] == ["logout"]
    # Another account on the same line is a new session.
    reborn.update([Seen("k", "ann")])
    assert [e["event"] for e in reborn.update([Seen("k", "bob")])] == ["logout", "login"]

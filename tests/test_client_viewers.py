"""The CLI's viewer table and config file, without a broker: command lines per viewer,
the order viewers are preferred in, and config files read back or refused in words."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from deskbroker.client import viewers
from deskbroker.client.config import ClientConfig, ClientError, load_config, save_config
from deskbroker.protocols.descriptors import PlanEntry, Protocol, build


def _programs(directory: Path, *names: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        program = directory / name
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    return str(directory)


def _descriptor(protocol: str, **settings: object) -> dict[str, object]:
    built = build(
        Protocol(protocol),
        PlanEntry(Protocol(protocol), None, settings),
        desktop_name="desk-01",
        address="10.0.0.5",
        desktop_ports={},
        username="alice",
    )
    return {**built.__dict__, "options": dict(built.options)}


def test_viewers_are_found_on_path_best_first(tmp_path: Path) -> None:
    path = _programs(tmp_path / "bin", "remmina", "xfreerdp", "remote-viewer")
    found = viewers.find("rdp", path)
    assert found is not None and found[0].program == "xfreerdp"
    vnc = viewers.find("vnc", path)
    assert vnc is not None and vnc[0].program == "remmina"
    assert viewers.find("dcv", path) is None
    assert viewers.available(path) == ["rdp", "vnc", "spice"]


@pytest.mark.parametrize(
    ("program", "protocol", "argv"),
    [
        ("xfreerdp", "rdp", ["xfreerdp", "FILE"]),
        ("remmina", "rdp", ["remmina", "-c", "FILE"]),
        ("remmina", "vnc", ["remmina", "-c", "vnc://10.0.0.5:5900"]),
        ("vncviewer", "vnc", ["vncviewer", "-Shared=1", "10.0.0.5::5900"]),
        ("ssh", "ssh", ["ssh", "-p", "22", "alice@10.0.0.5"]),
        ("remote-viewer", "spice", ["remote-viewer", "FILE"]),
        ("nxplayer", "nomachine", ["nxplayer", "--session", "FILE"]),
        ("dcvviewer", "dcv", ["dcvviewer", "FILE"]),
    ],
)
def test_each_viewers_command_line(program: str, protocol: str, argv: list[str]) -> None:
    viewer = next(v for v in viewers.VIEWERS[protocol] if v.program == program)
    made = viewers.command_line(viewer, program, _descriptor(protocol), Path("FILE"))
    assert made == argv


def test_vnc_options_come_from_the_answer_or_the_file() -> None:
    viewer = viewers.VIEWERS["vnc"][0]
    with_options = _descriptor("vnc", view_only=True, shared=False, fullscreen=True)
    expected = ["vncviewer", "-Shared=0", "-ViewOnly", "-FullScreen", "10.0.0.5::5900"]
    assert viewers.command_line(viewer, "vncviewer", with_options, Path("F")) == expected
    # A broker that sends no options: the .vnc file says the same.
    older = {**with_options, "options": {}}
    assert viewers.command_line(viewer, "vncviewer", older, Path("F")) == expected


def test_launch_files_are_the_users_alone(tmp_path: Path) -> None:
    written = viewers.write_launch_file(
        {"filename": "../../etc/passwd", "content": "x"}, tmp_path / "launch"
    )
    assert written.parent == tmp_path / "launch" and written.name == "_.._etc_passwd"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "launch").stat().st_mode) == 0o700


def test_config_round_trip_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    assert load_config(path) == ClientConfig()
    config = ClientConfig(url='https://b.example/"x\\', tenant="acme")
    save_config(config, path)
    assert load_config(path) == config
    path.write_text('url = "https://b.example"\ncolour = "blue"\n')
    with pytest.raises(ClientError, match="unknown setting 'colour'; known settings:"):
        load_config(path)
    path.write_text("url = https://b.example\n")
    with pytest.raises(ClientError, match="cannot read the configuration"):
        load_config(path)
    path.write_text("url = 8080\n")
    with pytest.raises(ClientError, match="url must be a string in quotes"):
        load_config(path)

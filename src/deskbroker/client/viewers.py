"""Native viewers the CLI launches, found on PATH, and the launch files it writes.

Each protocol lists the programs that open it, best first; the first found is used.
Terminal programs (ssh) run in the foreground; graphical viewers are started detached,
so the command returns while the desktop stays open.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

Descriptor = Mapping[str, Any]


@dataclass(frozen=True)
class Viewer:
    """A program that opens one protocol, and how its command line is made."""

    program: str
    protocol: str
    argv: Callable[[str, Descriptor, Path], list[str]]
    terminal: bool = False


def _file(program: str, descriptor: Descriptor, path: Path) -> list[str]:
    return [program, str(path)]


def _remmina(program: str, descriptor: Descriptor, path: Path) -> list[str]:
    # Remmina imports .rdp files; other protocols it takes as a URI.
    target = str(path) if descriptor.get("protocol") == "rdp" else str(descriptor["uri"])
    return [program, "-c", target]


def _vnc_options(descriptor: Descriptor) -> dict[str, bool]:
    """The plan's VNC options: from the answer's options, else from the .vnc file."""
    options = descriptor.get("options")
    if isinstance(options, Mapping) and options:
        return {k: bool(options.get(k)) for k in ("view_only", "shared", "fullscreen")}
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(str(descriptor.get("content") or ""))
        section = parser["Options"]
    except (configparser.Error, KeyError):
        return {"view_only": False, "shared": True, "fullscreen": False}
    return {
        "view_only": section.get("ViewOnly", "0") == "1",
        "shared": section.get("Shared", "1") == "1",
        "fullscreen": section.get("FullScreen", "0") == "1",
    }


def _tigervnc(program: str, descriptor: Descriptor, path: Path) -> list[str]:
    host, port = str(descriptor["host"]), int(descriptor["port"])
    options = _vnc_options(descriptor)
    target = f"[{host}]::{port}" if ":" in host else f"{host}::{port}"
    argv = [program, f"-Shared={1 if options['shared'] else 0}"]
    if options["view_only"]:
        argv.append("-ViewOnly")
    if options["fullscreen"]:
        argv.append("-FullScreen")
    return [*argv, target]


def _ssh(program: str, descriptor: Descriptor, path: Path) -> list[str]:
    parts = urlsplit(str(descriptor["uri"]))
    user = unquote(parts.username or "")
    host = str(descriptor["host"])
    options = descriptor.get("options")
    x11 = isinstance(options, Mapping) and bool(options.get("x11_forwarding"))
    return [
        program,
        *(["-X"] if x11 else []),
        "-p",
        str(descriptor["port"]),
        f"{user}@{host}" if user else host,
    ]


def _nxplayer(program: str, descriptor: Descriptor, path: Path) -> list[str]:
    return [program, "--session", str(path)]


VIEWERS: dict[str, tuple[Viewer, ...]] = {
    "rdp": (
        Viewer("xfreerdp", "rdp", _file),
        Viewer("xfreerdp3", "rdp", _file),
        Viewer("remmina", "rdp", _remmina),
    ),
    "vnc": (
        Viewer("vncviewer", "vnc", _tigervnc),
        Viewer("xtigervncviewer", "vnc", _tigervnc),
        Viewer("remmina", "vnc", _remmina),
    ),
    "ssh": (Viewer("ssh", "ssh", _ssh, terminal=True),),
    "spice": (Viewer("remote-viewer", "spice", _file), Viewer("remmina", "spice", _remmina)),
    "nomachine": (Viewer("nxplayer", "nomachine", _nxplayer),),
    "dcv": (Viewer("dcvviewer", "dcv", _file),),
}


def find(protocol: str, path: str | None = None) -> tuple[Viewer, str] | None:
    """The first viewer of ``protocol`` on PATH, with its full path."""
    for viewer in VIEWERS.get(protocol, ()):
        found = shutil.which(viewer.program, path=path)
        if found:
            return viewer, found
    return None


def available(path: str | None = None) -> list[str]:
    """The protocols this machine has a viewer for (what the CLI ``accepts``)."""
    return [protocol for protocol in VIEWERS if find(protocol, path) is not None]


def write_launch_file(descriptor: Descriptor, directory: Path) -> Path:
    """The descriptor's file, readable by the user only (it names the user and host)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(descriptor.get("filename") or "desktop.txt"))
    target = directory / (name.lstrip(".") or "desktop.txt")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        handle.write(str(descriptor.get("content") or ""))
    return target


def launch(viewer: Viewer, program: str, descriptor: Descriptor, file: Path) -> int | None:
    """Runs the viewer: a terminal program in the foreground (its exit status), a
    graphical one detached (None)."""
    argv = viewer.argv(program, descriptor, file)
    if viewer.terminal:
        return subprocess.run(argv, check=False).returncode
    subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return None


def command_line(viewer: Viewer, program: str, descriptor: Descriptor, file: Path) -> list[str]:
    return viewer.argv(program, descriptor, file)

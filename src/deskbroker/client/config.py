"""The CLI's own files: the broker's URL in a config file, launch files in a cache.

``$XDG_CONFIG_HOME/deskbroker/config.toml`` (``~/.config`` by default, or the file
``$DESKBROKER_CLIENT_CONFIG`` names) holds ``url``, ``tenant`` and ``source``; the token
cache sits beside it (``client/login.py``).
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path


class ClientError(Exception):
    """Something the user can act on; the message says what, in words."""


@dataclass(frozen=True)
class ClientConfig:
    url: str | None = None
    tenant: str | None = None
    source: str | None = None
    download_dir: str | None = None

    def updated(self, **changes: str | None) -> ClientConfig:
        """A copy with the given values set (``None`` leaves a value as it is)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "deskbroker"


def config_file() -> Path:
    explicit = os.environ.get("DESKBROKER_CLIENT_CONFIG")
    return Path(explicit).expanduser() if explicit else config_dir() / "config.toml"


def launch_dir(config: ClientConfig) -> Path:
    """Where launch files are written: the configured folder, else the user's cache."""
    if config.download_dir:
        return Path(config.download_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deskbroker" / "launch"


def load_config(path: Path | None = None) -> ClientConfig:
    path = path or config_file()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return ClientConfig()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ClientError(f"cannot read the configuration {path}: {exc}") from exc
    known = {f.name for f in fields(ClientConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ClientError(
            f"{path}: unknown setting {unknown[0]!r}; known settings: {', '.join(sorted(known))}"
        )
    for key, value in data.items():
        if not isinstance(value, str):
            raise ClientError(f"{path}: {key} must be a string in quotes")
    return ClientConfig(**data)


def save_config(config: ClientConfig, path: Path | None = None) -> Path:
    """Writes the set values as TOML (a JSON string is a valid TOML basic string)."""
    path = path or config_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = [
        f"{f.name} = {json.dumps(getattr(config, f.name))}"
        for f in fields(ClientConfig)
        if getattr(config, f.name) is not None
    ]
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path

"""The agent's settings: an INI file (``[agent]`` section) overridden by the environment.

Every key may be given as ``DESKBROKER_AGENT_<KEY>`` (upper case) in the environment, which
wins over the file; the systemd unit reads ``/etc/default/deskbroker-agent`` for that.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_FILE = Path("/etc/deskbroker-agent.conf")
ENV_PREFIX = "DESKBROKER_AGENT_"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class AgentConfig:
    """What the agent needs to know. Only ``broker_url`` is required."""

    broker_url: str = ""
    # A tenant enrolment key or a single-use enrolment secret; when empty the agent looks
    # for the secret the broker put in the instance metadata.
    enrolment_token: str = ""
    metadata_url: str = "http://169.254.169.254"
    # Where the credential, the sequence counter and the event queue live (root only).
    state_dir: str = "/var/lib/deskbroker-agent"
    # Bind outgoing connections to this address (tests give each instance its own).
    source_address: str = ""
    ca_file: str = ""
    heartbeat_s: float = 60.0
    # Each heartbeat waits heartbeat_s times a random factor in [1 - jitter, 1 + jitter]
    # so that a thousand desktops booted together do not beat together.
    heartbeat_jitter: float = 0.2
    poll_s: float = 2.0
    idle_threshold_s: float = 600.0
    # Backoff while the broker is unreachable: retry_s doubling up to retry_max_s.
    retry_s: float = 1.0
    retry_max_s: float = 30.0
    request_timeout_s: float = 10.0
    # Comma-separated event sources; "auto" takes logind or utmp, and xvnc when x_display is set.
    sources: str = "auto"
    x_display: str = ""
    xvnc_log: str = ""
    # The account an X display's session belongs to; empty: the user the broker assigned
    # the desktop to, else the owner of the X server process.
    x_user: str = ""

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)


def _coerce(name: str, kind: object, raw: str) -> object:
    if kind in (float, "float"):
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, not {raw!r}") from None
        if value < 0:
            raise ConfigError(f"{name} must not be negative")
        return value
    return raw.strip()


def load(path: Path | None = None, environ: dict[str, str] | None = None) -> AgentConfig:
    """Read the file (if it exists) and the environment into an ``AgentConfig``."""
    env = dict(os.environ) if environ is None else environ
    file = path or Path(env.get(ENV_PREFIX + "CONFIG", str(DEFAULT_FILE)))
    values: dict[str, object] = {}
    known = {f.name: f.type for f in fields(AgentConfig)}
    if file.exists():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(file, encoding="utf-8")
        except configparser.Error as exc:
            raise ConfigError(f"{file}: {exc}") from None
        if parser.has_section("agent"):
            for key, raw in parser.items("agent"):
                if key not in known:
                    raise ConfigError(f"{file}: unknown setting {key!r}")
                values[key] = _coerce(key, known[key], raw)
    for key, kind in known.items():
        given = env.get(ENV_PREFIX + key.upper())
        if given is not None:
            values[key] = _coerce(key, kind, given)
    config = AgentConfig(**values)  # type: ignore[arg-type]
    if not config.broker_url.startswith(("http://", "https://")):
        raise ConfigError(
            "broker_url must be the broker's address such as https://broker.example:8443 "
            f"(set it in {file} or {ENV_PREFIX}BROKER_URL)"
        )
    if not 0 <= config.heartbeat_jitter < 1:
        raise ConfigError("heartbeat_jitter must be at least 0 and below 1")
    return config

"""What an administrator sets on a local center, and what a pool sets for its desktops.

Every setting of a local center acts on the broker's own host: it names a directory
the broker writes, a command it runs and a Unix user it runs it as. So all of it is a
global administrator's (``host_side_params``); a tenant administrator is refused in
words by the admin API (``services/outbound_params.py``).
"""

from __future__ import annotations

import ipaddress
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Xvnc's own geometry syntax, bounded to what a desktop can use.
GEOMETRY = r"^[1-9][0-9]{2,4}x[1-9][0-9]{2,4}$"
# A desktop's name as the pool makes it: it becomes the Xvnc desktop title.
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+:-]{0,99}$"


class LocalParams(BaseModel):
    """Where the sessions listen, what runs in them and as whom. The VNC password every
    desktop's password file is made from is the center secret ``vnc_password``."""

    model_config = ConfigDict(extra="forbid")
    # All of these name the broker host's own files, programs and users.
    host_side_params: ClassVar[frozenset[str]] = frozenset(
        {"state_dir", "session_command", "session_user"}
    )

    state_dir: str = Field(
        min_length=2,
        max_length=500,
        description="absolute directory for each desktop's state and password file",
    )
    address: str = Field(
        default="127.0.0.1", description="the IP address the Xvnc servers listen on"
    )
    first_display: int = Field(default=100, ge=1, le=9000, description="X display of slot 0")
    first_port: int = Field(default=5910, ge=1024, le=65000, description="VNC port of slot 0")
    max_desktops: int = Field(
        default=20, ge=1, le=500, description="slots: desktop k uses display and port + k"
    )
    session_command: list[str] = Field(
        default_factory=lambda: ["xterm"],
        min_length=1,
        max_length=50,
        description="the program (and arguments) run in each session, e.g. a window manager",
    )
    session_user: str | None = Field(
        default=None,
        pattern=r"^[a-z_][a-z0-9_.-]{0,31}$",
        description="the Unix user sessions run as (required when the broker runs as root)",
    )
    geometry: str = Field(default="1280x800", pattern=GEOMETRY)
    depth: int = Field(default=24, description="colour depth: 16, 24 or 32")
    broker_tag: str = Field(default="deskbroker", pattern=r"^[A-Za-z0-9_.:-]{1,40}$")
    start_timeout_s: float = Field(
        default=15.0, gt=0, le=300, description="how long a new Xvnc may take to listen"
    )
    max_in_flight: int = Field(default=4, ge=1, le=100)
    build_timeout_s: float = Field(default=120.0, gt=0, le=3600)

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or "\x00" in value or "/../" in f"{value}/":
            raise ValueError("state_dir must be an absolute path without '..'")
        return value.rstrip("/") or "/"

    @field_validator("address")
    @classmethod
    def _ip(cls, value: str) -> str:
        try:
            found = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("address must be an IP address, e.g. 127.0.0.1") from None
        if found.is_unspecified or found.is_multicast:
            # It is also the address viewers are sent to: it must be one they can reach.
            raise ValueError("address must be one of the host's own addresses, not any")
        return str(found)

    @field_validator("depth")
    @classmethod
    def _depth(cls, value: int) -> int:
        if value not in (16, 24, 32):
            raise ValueError("depth must be 16, 24 or 32")
        return value

    @field_validator("session_command")
    @classmethod
    def _command(cls, value: list[str]) -> list[str]:
        if any(not part or "\x00" in part or len(part) > 1000 for part in value):
            raise ValueError("session_command parts must be non-empty strings")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> LocalParams:
        if self.first_port + self.max_desktops - 1 > 65535:
            raise ValueError("first_port + max_desktops goes beyond port 65535")
        return self


class LocalProvisionParams(BaseModel):
    """What a pool sets for its local desktops: only the screen. The command and the
    user stay with the center, which only a global administrator writes."""

    model_config = ConfigDict(extra="forbid")

    geometry: str | None = Field(
        default=None, pattern=GEOMETRY, description="screen size (default: the center's)"
    )

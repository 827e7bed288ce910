"""Shared schema pieces: strict bodies, names, attribute filters, plan rules."""

from __future__ import annotations

from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from deskbroker.domain.membership import FilterOp


def _no_control_characters(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("a username cannot contain control characters such as newlines")
    return value


# A user's name as typed at sign-in (``alice``, ``alice@corp.example``, ``CORP\alice``).
Username = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, strip_whitespace=True),
    AfterValidator(_no_control_characters),
]
Name = Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]
Text = Annotated[str, StringConstraints(max_length=2000)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=64)]
# Write-only secrets (passwords, keys); sealed before they reach the database.
Secrets = Annotated[
    dict[
        Annotated[str, StringConstraints(min_length=1, max_length=100)],
        Annotated[str, StringConstraints(max_length=8192)],
    ],
    Field(max_length=32),
]
# A free-form JSON value nests at most this deep.
MAX_DEPTH = 32


def _check_text(value: Any, where: str, depth: int = 0) -> None:
    """Reject NUL characters anywhere (PostgreSQL cannot store them) and absurd nesting."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{where or 'the body'} nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{where or 'the body'} contains a NUL character")
    elif isinstance(value, dict):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            _check_text(key, inner, depth + 1)
            _check_text(item, inner, depth + 1)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            _check_text(item, f"{where}[{n}]", depth + 1)


class Body(BaseModel):
    """A request body: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _clean_text(cls, data: Any) -> Any:
        _check_text(data, "")
        return data


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Stamped(Out):
    id: str
    tenant_id: str
    created_at: datetime
    updated_at: datetime


class FilterIn(Body):
    attribute: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    op: FilterOp
    value: Annotated[str, StringConstraints(max_length=500)] = ""


class PlanEvent(StrEnum):
    DISCONNECT = "disconnect"
    LOGOUT = "logout"
    IDLE = "idle"


class PlanPowerAction(StrEnum):
    """What a power plan's rule does to the desktop; the driver's verbs (start, stop,
    resume...) are ``centers.base.PowerAction``."""

    SUSPEND = "suspend"
    SHUTDOWN = "shutdown"
    REBOOT = "reboot"
    NOTHING = "nothing"


class ReleaseEvent(StrEnum):
    DISCONNECT = "disconnect"
    LOGOUT = "logout"


class ReleaseAction(StrEnum):
    RELEASE = "release"
    TERMINATE = "terminate"
    KEEP = "keep"


class PowerRule(Body):
    event: PlanEvent
    after_minutes: int = Field(ge=0, le=60 * 24 * 30)
    action: PlanPowerAction


class ReleaseRule(Body):
    event: ReleaseEvent
    after_minutes: int = Field(ge=0, le=60 * 24 * 30)
    action: ReleaseAction


class ProtocolName(StrEnum):
    RDP = "rdp"
    VNC = "vnc"
    SSH = "ssh"


class ColorDepth(IntEnum):
    C8 = 8
    C15 = 15
    C16 = 16
    C24 = 24
    C32 = 32


class RdpSettings(Body):
    fullscreen: bool = True
    multimon: bool = False
    clipboard: bool = True
    printers: bool = False
    drives: bool = False
    color_depth: ColorDepth = ColorDepth.C32


class VncSettings(Body):
    fullscreen: bool = False
    shared: bool = True
    view_only: bool = False


class SshSettings(Body):
    pass


PROTOCOL_SETTINGS: dict[ProtocolName, type[Body]] = {
    ProtocolName.RDP: RdpSettings,
    ProtocolName.VNC: VncSettings,
    ProtocolName.SSH: SshSettings,
}


class ProtocolEntry(Body):
    protocol: ProtocolName
    port: int | None = Field(default=None, ge=1, le=65535)
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="rdp: fullscreen, multimon, clipboard, printers, drives, color_depth; "
        "vnc: fullscreen, shared, view_only; ssh: none",
    )

    @model_validator(mode="after")
    def _known_settings(self) -> ProtocolEntry:
        model = PROTOCOL_SETTINGS[self.protocol]
        known = ", ".join(model.model_fields) or "none"
        for key in self.settings:
            if key not in model.model_fields:
                raise ValueError(
                    f"{self.protocol.value} has no setting {key!r}; its settings: {known}"
                )
        try:
            parsed = model.model_validate(self.settings)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{self.protocol.value} setting {where}: {first['msg']}") from exc
        self.settings = parsed.model_dump(mode="json", exclude_unset=True)
        return self

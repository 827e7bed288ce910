"""Shared schema pieces: strict bodies, names, attribute filters, plan rules."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from deskbroker.domain.membership import FilterOp

Name = Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]
Text = Annotated[str, StringConstraints(max_length=2000)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class Body(BaseModel):
    """A request body: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


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


class PowerAction(StrEnum):
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
    action: PowerAction


class ReleaseRule(Body):
    event: ReleaseEvent
    after_minutes: int = Field(ge=0, le=60 * 24 * 30)
    action: ReleaseAction


class ProtocolName(StrEnum):
    RDP = "rdp"
    VNC = "vnc"
    SSH = "ssh"


class ProtocolEntry(Body):
    protocol: ProtocolName
    port: int | None = Field(default=None, ge=1, le=65535)
    settings: dict[str, Any] = Field(default_factory=dict)

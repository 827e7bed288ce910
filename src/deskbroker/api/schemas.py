"""Shared schema pieces: strict bodies, names, secrets, protocol entries.

The stored configuration's models (provisioning, rule conditions, filters, plan rules)
are in ``domain/`` with the rules that read them back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from deskbroker.domain.stored import StoredModel
from deskbroker.errors import InvalidInput
from deskbroker.protocols import settings as protocol_settings
from deskbroker.protocols.kinds import Protocol


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


class Body(StoredModel):
    """A request body: unknown fields are an error, not silently dropped; no NUL
    anywhere, no absurd nesting (``domain.stored.StoredModel``)."""


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Stamped(Out):
    id: str
    tenant_id: str
    created_at: datetime
    updated_at: datetime


class ProtocolEntry(Body):
    """One protocol of a protocol plan, in the plan's order of preference."""

    protocol: Protocol
    port: int | None = Field(default=None, ge=1, le=65535)
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="; ".join(
            f"{p.value}: {protocol_settings.describe(p)}" for p in protocol_settings.SETTINGS
        ),
    )

    @model_validator(mode="after")
    def _known_settings(self) -> ProtocolEntry:
        try:
            self.settings = protocol_settings.validate(self.protocol, self.settings)
        except InvalidInput as exc:
            raise ValueError(exc.detail) from exc
        return self

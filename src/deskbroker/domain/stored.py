"""Configuration the admin API stores as JSON and the broker reads back typed.

A pool's provisioning, an assignment rule's conditions, a pool's membership filters and
the rules of power and release plans are pydantic models (``StoredModel``) kept next to
the rules that use them in ``domain/``. The admin API validates a body with the same
model (strict: an unknown field is an error), and every reader turns the stored JSON
back into it with ``from_stored``, so defaults are written once, in the model.

Reading is lenient where writing is strict: a key this version does not know (written
by a later one, or one since retired) is dropped instead of failing the engine tick or
the login that reads it; validators that check more than a shape (a time zone, a limit
against another) may relax when ``reading(info)`` is true.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationInfo, model_validator

# A free-form JSON value nests at most this deep.
MAX_DEPTH = 32
# The validation context key that marks a read of stored configuration.
_READING = "deskbroker.reading_stored"


def check_text(value: Any, where: str, depth: int = 0) -> None:
    """Reject NUL characters anywhere (PostgreSQL cannot store them) and absurd nesting."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{where or 'the body'} nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{where or 'the body'} contains a NUL character")
    elif isinstance(value, dict):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            check_text(key, inner, depth + 1)
            check_text(item, inner, depth + 1)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            check_text(item, f"{where}[{n}]", depth + 1)


def reading(info: ValidationInfo) -> bool:
    """Whether this validation reads stored configuration back (``from_stored``)."""
    return bool(info.context and info.context.get(_READING))


class StoredModel(BaseModel):
    """A model written by the admin API and read back by the broker: unknown fields are
    an error on write (not silently dropped), ignored on read."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _clean_text(cls, data: Any, info: ValidationInfo) -> Any:
        if reading(info):
            if isinstance(data, Mapping) and cls.model_config.get("extra") == "forbid":
                return {k: v for k, v in data.items() if k in cls.model_fields}
            return data
        check_text(data, "")
        return data

    @classmethod
    def from_stored(cls, data: Mapping[str, Any] | None) -> Self:
        """The stored JSON (``None`` or ``{}``: every default) as this model; a value
        that is not an object is a ``ValidationError`` like any other misfit."""
        value = {} if data is None else dict(data) if isinstance(data, Mapping) else data
        return cls.model_validate(value, context={_READING: True})

"""Center drivers found through the ``deskbroker.centers`` entry-point group."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from deskbroker.centers.base import CenterDriver
from deskbroker.errors import InvalidInput


@cache
def drivers() -> dict[str, type[CenterDriver]]:
    """Every installed driver by kind; first-party drivers are entry points too."""
    found: dict[str, type[CenterDriver]] = {}
    for entry in entry_points(group="deskbroker.centers"):
        cls = entry.load()
        if isinstance(cls, type) and issubclass(cls, CenterDriver):
            found[entry.name] = cls
    return found


def driver_class(kind: str) -> type[CenterDriver]:
    known = drivers()
    if kind not in known:
        raise InvalidInput(
            f"unknown center kind {kind!r}; installed kinds: {', '.join(sorted(known)) or 'none'}"
        )
    return known[kind]


def validate_params(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check a center's params against its driver, with the driver's own messages."""
    cls = driver_class(kind)
    try:
        return cls.Params.model_validate(dict(params)).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"center params: {where}: {first['msg']}") from exc


def open_driver(kind: str, params: Mapping[str, Any], secrets: Mapping[str, str]) -> CenterDriver:
    return driver_class(kind)(params, secrets)

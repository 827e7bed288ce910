"""A stored row as the dictionary of its columns, for answers that show rows whole."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from deskbroker.store.tables import Base


def columns_of(row: Base, hidden: Collection[str] = ()) -> dict[str, Any]:
    """Every column of ``row`` by name, but those in ``hidden`` (hashes, sealed secrets)."""
    return {c.key: getattr(row, c.key) for c in row.__table__.columns if c.key not in hidden}

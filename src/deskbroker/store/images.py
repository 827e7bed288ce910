"""A center's image rows, kept in line with what its full scans see."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from deskbroker.store.db import Unit
from deskbroker.store.tables import Image


@dataclass(frozen=True)
class SeenImage:
    """One image as a scan saw it (the store's copy of the driver's report)."""

    external_id: str
    name: str
    os: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)


def sync(session: Unit, tenant_id: str, center_id: str, images: Sequence[SeenImage]) -> None:
    """Add the new images, update the changed ones, delete those no longer offered."""
    existing = {
        i.external_id: i
        for i in session.scalars(select(Image).where(Image.center_id == center_id)).all()
    }
    for info in images:
        row = existing.pop(info.external_id, None)
        if row is None:
            session.add(
                Image(
                    tenant_id=tenant_id,
                    center_id=center_id,
                    external_id=info.external_id,
                    name=info.name,
                    os=info.os,
                    attributes=dict(info.attributes),
                )
            )
        elif (row.name, row.os, row.attributes) != (info.name, info.os, dict(info.attributes)):
            row.name, row.os, row.attributes = info.name, info.os, dict(info.attributes)
    for gone in existing.values():
        session.delete(gone)

"""The broker's marks kept in a VM's annotation (its "Notes" in the vSphere client).

A VM's annotation is the one place every vCenter has that is kept with the VM through
clones, moves and restarts, readable by a role with inventory rights only. The broker
writes its marks after a line ``[deskbroker]`` as one JSON object, below whatever an
administrator wrote above it; the inventory, a resumed build and the leak sweep read
them back from the VM itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from deskbroker.centers.base import CENTER_KEY, DESKTOP_KEY, POOL_KEY

HEADER = "[deskbroker]"
# The broker's own metadata keys kept on a VM. The agent's enrolment secret is not: anyone
# who can read the VM's notes in vCenter could read it.
_KEPT = frozenset({CENTER_KEY, POOL_KEY, DESKTOP_KEY, "deskbroker_task"})
# Notes longer than this are not the broker's to parse (vCenter allows about 64 KiB).
_MAX = 60000


@dataclass(frozen=True)
class Marks:
    broker: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()


def kept(metadata: Mapping[str, str]) -> dict[str, str]:
    """The metadata of a request worth writing on the VM."""
    return {k: v for k, v in metadata.items() if k in _KEPT or not k.startswith("deskbroker")}


def write(marks: Marks, notes: str = "") -> str:
    """``notes`` (an administrator's, kept) followed by the marks."""
    body = json.dumps(
        {"broker": marks.broker, "metadata": dict(marks.metadata), "tags": list(marks.tags)},
        sort_keys=True,
        separators=(",", ":"),
    )
    text = notes.split(HEADER, 1)[0].rstrip("\n")
    return f"{text}\n{HEADER}\n{body}" if text else f"{HEADER}\n{body}"


def read(annotation: str | None) -> Marks | None:
    """The marks in an annotation; ``None`` when it has none, or none that parse (a
    hand-edited note is not the broker's, so the VM is not either)."""
    if not annotation or HEADER not in annotation or len(annotation) > _MAX:
        return None
    body = annotation.rsplit(HEADER, 1)[1].strip()
    try:
        found = json.loads(body)
    except ValueError:
        return None
    if not isinstance(found, dict):
        return None
    broker, metadata, tags = found.get("broker"), found.get("metadata"), found.get("tags")
    if not isinstance(broker, str) or not isinstance(metadata, dict) or not isinstance(tags, list):
        return None
    return Marks(
        broker=broker,
        metadata={str(k): str(v) for k, v in metadata.items()},
        tags=tuple(str(t) for t in tags),
    )

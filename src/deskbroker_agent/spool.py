"""The on-disk event queue: every event is written here before it is sent.

One file per event, named by its sequence number, written atomically (temporary file,
fsync, rename), so a crash or power cut leaves either the whole event or none. Events
leave the queue only once the broker answered them; they are sent in sequence order,
and each carries an idempotency key and its sequence number, so that an event whose
answer was lost and is sent again is recognised by the broker and counted once.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new whole file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class Spool:
    """A directory of queued events and the counter that numbers them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.queue = directory / "queue"
        self.queue.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._counter = directory / "sequence"
        # The counter never goes back, even when the queue is empty: the broker ignores
        # a sequence number it has already seen from this desktop.
        self._next = self._read_counter()

    def _read_counter(self) -> int:
        try:
            stored = int(self._counter.read_text().strip() or "0")
        except (FileNotFoundError, ValueError):
            stored = 0
        newest = max((int(p.stem) for p in self.queue.glob("*.json")), default=0)
        return max(stored, newest) + 1

    def reset(self) -> None:
        """Start numbering afresh (after a new enrolment the broker expects 1 again)."""
        for path in self.queue.glob("*.json"):
            path.unlink()
        self._next = 1
        write_atomic(self._counter, b"0")

    def put(self, event: dict[str, Any]) -> dict[str, Any]:
        """Queue one event; returns it with its ``seq`` and idempotency ``key``."""
        seq = self._next
        entry = {**event, "seq": seq, "key": f"{seq}-{uuid.uuid4().hex[:12]}"}
        write_atomic(self._counter, str(seq).encode())
        write_atomic(self.queue / f"{seq:012d}.json", json.dumps(entry).encode())
        self._next = seq + 1
        return entry

    def pending(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """Queued events, oldest first."""
        for path in sorted(self.queue.glob("*.json")):
            try:
                yield path, json.loads(path.read_text())
            except (OSError, ValueError):
                path.unlink(missing_ok=True)  # a torn file cannot be sent; it never was whole

    def done(self, path: Path) -> None:
        """The broker answered this event: it leaves the queue."""
        path.unlink(missing_ok=True)

    def __len__(self) -> int:
        return sum(1 for _ in self.queue.glob("*.json"))

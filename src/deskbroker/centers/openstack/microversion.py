"""Which compute microversion to speak with a cloud, and what it allows.

The broker knows Nova up to ``NEWEST``; a cloud says what it knows in its version
document (``version`` is its newest, ``min_version`` its oldest). The two agree on the
newest both know, down to 2.1: clouds older than Train (2.79) run in production, and a
fixed microversion they do not know is refused with 406.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NEWEST = (2, 79)
OLDEST = (2, 1)


def parse(text: object) -> tuple[int, int] | None:
    """``"2.60"`` → ``(2, 60)``; ``None`` for anything that is not a microversion."""
    major, dot, minor = str(text or "").partition(".")
    if not dot or not major.isdigit() or not minor.isdigit():
        return None
    return int(major), int(minor)


@dataclass(frozen=True)
class Compute:
    """The microversion agreed on with one cloud and what it allows."""

    version: tuple[int, int]

    @property
    def header(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    @property
    def needs_networks(self) -> bool:
        """``networks`` is required when creating a server ("auto" allowed) (2.37)."""
        return self.version >= (2, 37)

    @property
    def tags_on_create(self) -> bool:
        """Tags may be given when creating a server (2.52), so the broker's servers carry
        them and a ``tags`` filter (2.26) finds them."""
        return self.version >= (2, 52)


def agree(document: Any) -> Compute | None:
    """The microversion to use with a cloud whose compute version document is
    ``document`` (``{"version": {...}}`` or ``{"versions": [...]}``); ``None`` when the
    cloud knows none the broker does."""
    doc: Any = None
    if isinstance(document, dict):
        doc = document.get("version")
        if doc is None:
            versions = [v for v in document.get("versions") or [] if isinstance(v, dict)]
            doc = next((v for v in versions if v.get("id") == "v2.1"), None)
    if not isinstance(doc, dict):
        return Compute(OLDEST)
    newest = parse(doc.get("version"))
    if newest is None:
        return Compute(OLDEST)  # a cloud without microversions speaks plain 2.1
    oldest = parse(doc.get("min_version")) or OLDEST
    chosen = min(newest, NEWEST)
    if chosen < oldest or chosen < OLDEST:
        return None
    return Compute(chosen)

"""The catalog of grantable permissions, as the services that check grants see it.

The catalog is read off the admin API's routes (``api/permissions.catalog``), which the
services below the API cannot import; the API hands its reader here when it is
imported, as it hands its routes to ``api/permissions``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

Catalog = Mapping[str, frozenset[str]]

_reader: list[Callable[[], Catalog]] = []


def provide(reader: Callable[[], Catalog]) -> None:
    """Name the function that returns every admin resource and its actions."""
    _reader[:] = [reader]


def catalog() -> Catalog:
    """Every admin resource with its actions (what a grant like ``pools:*`` expands to)."""
    if not _reader:
        raise RuntimeError("the permission catalog is asked for before the API provides it")
    return _reader[0]()

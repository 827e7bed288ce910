"""A third-party center driver installed for one test: a distribution on ``sys.path``
whose module and ``deskbroker.centers`` entry points the test writes."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from deskbroker.centers.registry import drivers

DIST = "acme_centers-1.0.dist-info"
# What every test driver module starts with.
HEAD = """
from typing import ClassVar
from pydantic import BaseModel
from deskbroker.centers.base import Capability, CenterDriver, MachineInfo

class Params(BaseModel):
    pass
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Where ``install`` writes; the registry reads the installed entry points afresh
    during the test and after it."""
    dist = tmp_path / DIST
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-centers\nVersion: 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    drivers.cache_clear()
    yield tmp_path
    drivers.cache_clear()


def install(root: Path, module: str, body: str, entries: dict[str, str]) -> None:
    """Write ``module`` (``HEAD`` plus ``body``) and register its classes by kind."""
    (root / f"{module}.py").write_text(HEAD + textwrap.dedent(body))
    lines = "".join(f"{name} = {module}:{cls}\n" for name, cls in entries.items())
    (root / DIST / "entry_points.txt").write_text(f"[deskbroker.centers]\n{lines}")

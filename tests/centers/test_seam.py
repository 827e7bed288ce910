"""The center seam is sealed: the core knows drivers only through ``centers.base`` and
the entry points, never by importing one."""

from __future__ import annotations

import ast
from pathlib import Path

import deskbroker
from deskbroker.centers.registry import drivers

ROOT = Path(deskbroker.__file__).parent


def _driver_modules() -> set[str]:
    """The modules each installed driver lives in (``deskbroker.centers.openstack``...)."""
    found = set()
    for cls in drivers().values():
        module = cls.__module__
        parts = module.split(".")
        # A driver in a folder owns the folder; a driver in a module owns the module.
        found.add(".".join(parts[:3]) if parts[:2] == ["deskbroker", "centers"] else module)
    return found


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_core_module_imports_a_driver() -> None:
    owned = _driver_modules()
    assert "deskbroker.centers.openstack" in owned
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        module = ".".join(("deskbroker", *path.relative_to(ROOT).with_suffix("").parts))
        if any(module == o or module.startswith(o + ".") for o in owned):
            continue  # a driver's own files
        for name in _imports(path):
            if any(name == o or name.startswith(o + ".") for o in owned):
                offenders.append(f"{module} imports {name}")
    assert offenders == []

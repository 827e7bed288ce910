"""The center seam is sealed: the core knows drivers only through ``centers.base`` and
the entry points, never by importing one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import deskbroker
import deskbroker.centers._template
from deskbroker.centers._template.driver import TemplateCenter
from deskbroker.centers.base import BuildLimits
from deskbroker.centers.registry import DriverContractError, contract_faults, drivers
from tests.centers.plugins import install

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


def test_a_driver_declaring_provision_without_create_fails_to_load(plugin: Path) -> None:
    install(
        plugin,
        "acme_hollow",
        """
class Hollow(CenterDriver):
    kind: ClassVar[str] = "hollow"
    Params: ClassVar[type[BaseModel]] = Params
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.INVENTORY, Capability.PROVISION, Capability.POWER}
    )

    def inventory(self) -> list[MachineInfo]:
        return []
""",
        {"hollow": "Hollow"},
    )
    with pytest.raises(DriverContractError) as refused:
        drivers()
    assert str(refused.value) == (
        "center driver 'hollow' (acme_hollow:Hollow) cannot be loaded: "
        "it declares provision but has no ProvisionParams model; "
        "it declares power but does not implement power(); "
        "it declares provision but does not implement create(); "
        "it declares provision without leak_sweep, terminate"
    )


def test_a_conforming_third_party_driver_loads_beside_the_first_party_ones(
    plugin: Path,
) -> None:
    install(
        plugin,
        "acme_lab",
        """
class Lab(CenterDriver):
    kind: ClassVar[str] = "lab"
    Params: ClassVar[type[BaseModel]] = Params
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.INVENTORY})

    def inventory(self) -> list[MachineInfo]:
        return [MachineInfo(external_id="m1", name="lab-1")]
""",
        {"lab": "Lab"},
    )
    loaded = drivers()
    assert {"lab", "openstack", "static"} <= set(loaded)
    assert loaded["lab"].__module__ == "acme_lab"


def test_the_template_driver_loads_clean_and_is_not_registered() -> None:
    assert contract_faults(TemplateCenter) == []
    assert TemplateCenter.kind not in drivers()
    assert TemplateCenter not in drivers().values()
    driver = TemplateCenter({"url": "https://hypervisor.example/api", "username": "u"}, {})
    assert driver.limits() == BuildLimits(max_in_flight=10)
    assert (Path(deskbroker.centers._template.__file__).parent / "README.md").is_file()

"""The layering reads in the code: drivers import the driver protocol, models, errors and secrets, nothing above them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sandboxes
from sandboxes import specs

ROOT = Path(sandboxes.__file__).parent
BELOW_DRIVERS = {"driver", "models", "errors", "secrets", "_extract", "_cache"}


def _library_imports(path: Path, package: tuple[str, ...] | None = None) -> set[str]:
    """The sandboxes modules a file imports, by name relative to the package (``driver``, ``provider``...)."""
    package = package or path.relative_to(ROOT.parent).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                parts = [*base, *(node.module.split(".") if node.module else [])]
            else:
                parts = (node.module or "").split(".")
            if parts[:1] == ["sandboxes"]:
                names = [*parts[1:]] or [alias.name for alias in node.names]
                found.add(names[0] if names else "")
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("sandboxes."))
    return found


@pytest.mark.parametrize("name", [spec.name for spec in specs.BUILTIN])
def test_a_driver_imports_nothing_above_the_driver_protocol(name: str) -> None:
    module = Path(specs.spec(name).module.replace(".", "/") + ".py")
    path = ROOT.parent / module
    above = _library_imports(path) - BELOW_DRIVERS - {"providers"}
    assert not above, f"{module} imports {sorted(above)}: a driver does only the wire"


def test_the_layer_check_sees_an_import_from_above(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from ..provider import SandboxProvider\nfrom ..driver import Exit\nimport sandboxes.manager\n")
    assert _library_imports(probe, ("sandboxes", "providers")) == {"provider", "driver", "manager"}

"""The runtime imports neither the control-node tooling nor anything outside the stdlib."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "src" / "taskfleet"


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_runtime_modules_import_only_the_standard_library_and_the_runtime() -> None:
    modules = sorted(RUNTIME.glob("*.py"))
    assert len(modules) > 5
    for path in modules:
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top == "taskfleet":
                assert not name.startswith("taskfleet.ops"), f"{path.name} imports {name}"
            else:
                assert top in sys.stdlib_module_names, f"{path.name} imports {name}"

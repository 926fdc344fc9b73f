"""The autoscaler is pure logic beside the scheduler (docs/architecture.md): it imports only
the model and the clock of Elastin, and nothing that does I/O of its own. import-linter keeps
the layers (``make lint``); this reads the imports directly, so that a wrong one fails here
with the module and the name."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "src" / "elastin" / "autoscale"
ALLOWED = ("elastin.model", "elastin.clock", "elastin.autoscale")
STDLIB = {"__future__", "dataclasses", "math", "typing"}


def imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
    return out


def test_the_autoscaler_imports_only_the_model_and_the_clock() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert {m.name for m in modules} >= {"__init__.py", "horizontal.py", "vertical.py"}
    for module in modules:
        for name in imports(module):
            if name.startswith("elastin"):
                assert name.startswith(ALLOWED), f"{module.name} imports {name}"
            else:
                assert name.split(".")[0] in STDLIB, f"{module.name} imports {name}"

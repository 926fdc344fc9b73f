"""The layering rule of docs/architecture.md, checked on the source's imports."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[3] / "src" / "elastin"

# package -> packages of ours it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "model": ("store", "scheduler", "client", "server", "agent", "sdk", "cli", "testing"),
    "store": ("scheduler", "client", "server", "agent", "sdk", "cli"),
    "scheduler": ("store", "client", "server", "agent", "sdk", "cli"),
    "client": ("store", "scheduler", "server", "agent", "sdk", "cli"),
    "agent": ("server", "sdk", "cli", "scheduler"),
    "server": ("agent", "sdk", "cli"),
    "sdk": ("server", "agent", "cli"),
    "mesh": ("store", "scheduler", "server", "agent", "sdk", "cli"),
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_layers_point_one_way() -> None:
    bad = []
    for pkg, forbidden in FORBIDDEN.items():
        for path in (SRC / pkg).rglob("*.py"):
            for mod in imports_of(path):
                parts = mod.split(".")
                if parts[0] == "elastin" and len(parts) > 1 and parts[1] in forbidden:
                    bad.append(f"{path.relative_to(SRC)} imports {mod}")
    assert not bad, "layering violated:\n" + "\n".join(bad)

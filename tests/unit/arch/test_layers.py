"""The layer contracts of docs/architecture.md, kept by import-linter (``[tool.importlinter]``
in pyproject.toml, run by ``make lint``).

The real tree keeps every contract; a copy of the source with one deliberately wrong import
breaks the contract that forbids it, and ``lint-imports`` names that contract.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SRC = ROOT / "src" / "elastin"
CONFIG = ROOT / "pyproject.toml"


def lint_imports(python_path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` with the project's contracts on the package found on python_path."""
    env = {**os.environ, "PYTHONPATH": str(python_path), "COLUMNS": "200", "NO_COLOR": "1"}
    code = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    return subprocess.run(
        [sys.executable, "-c", code, "--no-cache", "--no-logo", str(CONFIG)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_source_keeps_every_contract() -> None:
    result = lint_imports(ROOT / "src", ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout


# (module of the copy, the wrong import added to it, the contract it breaks)
WRONG_IMPORTS = [
    ("model/units.py", "elastin.server", "Layers: model < pure logic, client"),
    ("scheduler/core.py", "elastin.store", "Layers: model < pure logic, client"),
    ("server/apps.py", "elastin.mesh.haproxy.render", "HAProxy-specific code is imported only"),
    ("mesh/haproxy/render.py", "elastin.server.apps", "mesh's running parts never import the se"),
    ("server/app.py", "elastin.agent.runner", "The server never imports the agent"),
    ("client/http.py", "elastin.store.base", "The client is a thin HTTP client"),
    ("agent/mesh.py", "elastin.agent.drivers.base", "The agent's mesh manager does not import"),
]


@pytest.mark.parametrize(("module", "wrong", "contract"), WRONG_IMPORTS)
def test_a_wrong_import_breaks_its_contract(
    tmp_path: Path, module: str, wrong: str, contract: str
) -> None:
    copy = tmp_path / "elastin"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / module).open("a") as f:
        f.write(f"\nimport {wrong}  # deliberately wrong\n")
    result = lint_imports(tmp_path, tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    broken = [line for line in out.splitlines() if " BROKEN" in line]
    assert any(contract in line for line in broken), out
    importer = "elastin." + module.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> {wrong}" in out, out


def test_a_new_top_level_package_must_be_given_a_layer(tmp_path: Path) -> None:
    copy = tmp_path / "elastin"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "newpkg").mkdir()
    (copy / "newpkg" / "__init__.py").write_text('"""Not placed in any layer yet."""\n')
    result = lint_imports(tmp_path, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not listed as layers" in result.stdout and "- elastin.newpkg" in result.stdout


def test_make_lint_runs_the_contracts() -> None:
    makefile = (ROOT / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "lint-imports" in lint, lint

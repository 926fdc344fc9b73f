"""Every test under tests/integration and tests/e2e carries the ``integration`` marker, so that
``pytest -m "not integration"`` runs no real processes, sockets or cgroups.

The marker is added centrally (a collection hook in tests/integration/conftest.py and
tests/e2e/conftest.py); this asks pytest itself which of those tests a ``not integration``
run would keep: none.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def collect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_integration_or_e2e_test_lacks_the_marker() -> None:
    result = collect("-m", "not integration", "tests/integration", "tests/e2e")
    out = result.stdout + result.stderr
    # 5: nothing left to run once every test is deselected
    assert result.returncode in (0, 5), out
    kept = [line for line in result.stdout.splitlines() if "::" in line]
    assert not kept, "integration tests without the integration marker:\n" + "\n".join(kept)
    # and there were tests to deselect: the check is not passing on an empty collection
    assert " deselected" in out and "no tests collected (0 deselected)" not in out, out

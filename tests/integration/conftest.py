"""Every test under tests/integration carries the ``integration`` marker, whether or not its
module says so: ``pytest -m "not integration"`` never starts real processes from here
(tests/unit/arch/test_markers.py checks it)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)

"""The demo's load generator (examples/shop/loadgen.py) steps its load up and down (issue
#13, item 8): quiet, busy, quiet, ... one phase each, so the shop's autoscaled services have
something to follow."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

SHOP = Path(__file__).resolve().parents[3] / "examples" / "shop"


def test_the_rate_alternates_quiet_and_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(SHOP))
    sys.modules.pop("loadgen", None)
    try:
        loadgen = importlib.import_module("loadgen")
        assert (loadgen.QUIET, loadgen.BUSY, loadgen.PHASE) == (3.0, 15.0, 60.0)
        rates = [loadgen.rate_at(t) for t in (0, 59.9, 60, 119.9, 120, 180, 240)]
        assert rates == [3.0, 3.0, 15.0, 15.0, 3.0, 15.0, 3.0]
        assert loadgen.rate_at(15, quiet=1, busy=9, phase=10) == 9
    finally:
        sys.modules.pop("loadgen", None)

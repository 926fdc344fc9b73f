"""The demo's load generator (examples/shop/loadgen.py) steps its load up and down (issue
#13, item 8): quiet, busy, quiet, ... one phase each, so the shop's autoscaled services have
something to follow."""

from __future__ import annotations

import contextlib
import importlib
import subprocess
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


def test_a_phase_of_zero_requests_idles_instead_of_dividing_by_zero() -> None:
    """LOADGEN_QUIET=0 (a quiet phase with no load, to let a min: 0 service scale to zero)
    idles until the next phase: it crashed with ZeroDivisionError."""
    env = {"LOADGEN_QUIET": "0", "LOADGEN_PHASE": "60", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [sys.executable, str(SHOP / "loadgen.py")],
        env={**env, "PYTHONPATH": str(SHOP)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(2)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.terminate()
        proc.wait(10)

"""The scheduler benchmark runs in-process at its --quick size and prints BENCH.md's JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"


def test_bench_quick_json(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("elastin_bench_scheduler", BENCH / "scheduler.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "elastin_bench_scheduler", module)
    spec.loader.exec_module(module)
    assert (
        module.main(["--quick", "--json", "--nodes", "50", "--workloads", "10", "--replicas", "10"])
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["bench"] == "scheduler"
    assert set(doc["machine"]) == {"cpus", "python"}
    assert [r["case"].split()[0] for r in doc["results"]] == [
        "binpack",
        "spread",
        "binpack+preemption",
    ]
    for row in doc["results"]:
        assert set(row) == {"case", "system", "metric", "value", "runs"}
        assert row["system"] == "elastin" and row["metric"] == "placements_per_s"
        assert row["value"] > 0 and row["runs"] == 1

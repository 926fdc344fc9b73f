"""bench/elasticity.py (issue #13's benchmark): the specs it applies (its own service, and
HPA's defaults configured in Elastin), what it computes from a run's requests and polls
(p99 windows, reaction, failures) on hand-made timelines, and a ``--quick`` run against a real
daemon that prints BENCH.md's JSON with both systems' rows (no timing checks)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from elastin.mesh.haproxy.process import haproxy_binary
from elastin.model.spec import parse_spec

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def el(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("elasticity", BENCH / "elasticity.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "elasticity", module)
    spec.loader.exec_module(module)
    return module


def test_the_service_targets_100_rps_per_replica_behind_the_mesh(el: ModuleType) -> None:
    app = parse_spec(el.spec("x", "elastin"), file="x.yaml")
    api, caller = (next(w for w in app.workloads if w.name == n) for n in ("api", "caller"))
    auto = api.autoscale
    assert auto is not None and (auto.min, auto.max) == (1, 8)
    assert [(m.kind, m.target) for m in auto.metrics] == [("rps", 100.0)]
    assert auto.interval == 1.0  # Elastin's defaults
    assert auto.behavior.scale_down.stabilization_window == 60.0
    assert api.health is not None and caller.upstreams  # the load goes through the mesh


def test_the_hpa_row_configures_hpas_defaults(el: ModuleType) -> None:
    api = parse_spec(el.spec("x", "hpa"), file="x.yaml").workloads[0]
    auto = api.autoscale
    assert auto is not None and auto.interval == 15.0
    assert auto.behavior.scale_down.stabilization_window == 300.0
    assert [(m.kind, m.target) for m in auto.metrics] == [("rps", 100.0)]


def test_the_cold_start_service_scales_to_zero(el: ModuleType) -> None:
    api = parse_spec(el.spec("x", "elastin", zero=True), file="x.yaml").workloads[0]
    assert api.autoscale is not None and api.autoscale.min == 0
    assert api.autoscale.idle_after == 2.0
    lb = parse_spec(el.spec("x", "elastin", lb="least_request"), file="x.yaml").workloads[0]
    assert lb.mesh.lb == "least_request"


def test_p99_windows_count_a_failure_as_infinitely_slow(el: ModuleType) -> None:
    fast = [el.Sample(0.01 * i, 0.010, True) for i in range(100)]
    assert el.window_p99_ms(fast, 0.0, 1.0) == pytest.approx(10.0)
    assert el.window_p99_ms(fast, 5.0, 6.0) is None
    one_bad = [*fast[:99], el.Sample(0.995, 0.001, False)]
    assert el.window_p99_ms(one_bad, 0.0, 1.0) == pytest.approx(10.0)  # 1 of 100: the p99
    two_bad = [*fast[:98], el.Sample(0.985, 0.0, False), el.Sample(0.995, 0.0, False)]
    assert el.window_p99_ms(two_bad, 0.0, 1.0) == math.inf
    assert el.failures(two_bad, 0.0, 0.99) == 1
    kinds = [el.Sample(0.1, 0, False, "status 503"), el.Sample(0.2, 0, False, "timeout")]
    kinds += [el.Sample(0.3, 0, False, "timeout"), el.Sample(2.0, 0, False, "timeout")]
    assert el.error_kinds(kinds, 0.0, 1.0) == {"status 503": 1, "timeout": 2}


def timeline(el: ModuleType, slow_until: float, ready_from: float) -> object:
    """50/s fast until the step at 10 s, then 500/s: slow (1 s) until ``slow_until``, fast
    after; 1 replica ready until ``ready_from``, 5 after; the step down at 40 s."""
    samples = [el.Sample(i / 50, 0.005, True) for i in range(500)]
    samples += [
        el.Sample(t, 1.0 if t < slow_until else 0.005, True)
        for t in (10 + i / 500 for i in range(15_000))
    ]
    counts = [el.Count(t / 4, 5, 5 if t / 4 >= ready_from else 1) for t in range(200)]
    return el.Timeline(samples, counts, [(0, 50), (10, 500), (40, 50)], 10.0, 40.0, 50.0)


def test_reaction_waits_for_both_the_replicas_and_the_latency(el: ModuleType) -> None:
    # the replicas come at 13 s, the latency only at 16 s: 16 + the 1 s window - 10
    assert el.reaction(timeline(el, 16.0, 13.0), 5, 100.0) == pytest.approx(7.0, abs=0.11)
    # the latency is fine at once, the replicas come at 13 s
    assert el.reaction(timeline(el, 10.0, 13.0), 5, 100.0) == pytest.approx(3.0, abs=0.26)
    # never fast again before the step down: not measured
    assert el.reaction(timeline(el, 45.0, 13.0), 5, 100.0) is None
    m = el.measure(timeline(el, 16.0, 13.0))
    assert m.failed_requests == 0 and m.peak_ready == 5 and m.errors == {}
    assert m.ready_s == pytest.approx(3.0, abs=0.26) and m.decision_s == pytest.approx(0.0)
    assert m.scale_down_s is None  # never back to one replica


def test_an_unknown_system_or_case_is_named(
    el: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert el.main(["--quick", "--systems", "elastin,knative"]) == 2
    assert "unknown system 'knative'" in capsys.readouterr().err
    assert el.main(["--quick", "--cases", "step,warm_start"]) == 2
    assert "unknown case 'warm_start'; known: step, cold_start" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups")
@pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed")
def test_quick_run_prints_both_systems_rows(
    el: ModuleType, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dump = tmp_path / "timelines.json"
    assert el.main(["--quick", "--json", "--dump", str(dump)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["bench"] == "elasticity" and set(doc["machine"]) == {"cpus", "python"}
    rows = doc["results"]
    for row in rows:
        assert set(row) == {"case", "system", "metric", "value", "runs"}
    have = {(r["system"], r["metric"]) for r in rows}
    for system in ("elastin", "hpa"):
        assert (system, "failed_requests") in have and (system, "peak_ready_replicas") in have
        # each figure is measured or a note says it was not
        for metric in ("reaction_s", "scale_down_s"):
            assert (system, metric) in have or any(
                n.startswith(f"{system} {metric}: not reached") for n in doc["notes"]
            ), (system, metric, doc["notes"])
        assert any(n.startswith(f"{system}: waited") for n in doc["notes"])
    assert ("elastin", "cold_start_s") in have or any(
        n.startswith("cold_start_s not measured") for n in doc["notes"]
    )
    timelines = json.loads(dump.read_text())
    assert set(timelines) == {"elastin", "hpa"}
    assert all(t["counts"] and t["per_second"] for t in timelines.values())

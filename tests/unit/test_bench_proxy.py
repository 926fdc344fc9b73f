"""bench/proxy.py (issue #12's data plane benchmark): its peers' configurations, its ratio
rows, that ``elastin-full`` renders every request logged and traced, and a ``--quick`` run
with real proxies that prints BENCH.md's JSON with every system's rows (no timing checks)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from elastin.mesh.haproxy.process import HaproxyProcess, haproxy_binary
from elastin.mesh.haproxy.render import render

BENCH = Path(__file__).resolve().parents[2] / "bench"
HAPROXY = haproxy_binary()
H1, H2 = (18001, 18002), (18003, 18004)


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load("proxy", monkeypatch)


@pytest.fixture
def peers(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load("peers", monkeypatch)


def test_ratio_rows_pair_each_system_with_its_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    common = load("_common", monkeypatch)
    cpu = {"elastin": 20.0, "elastin-full": 22.0, "haproxy": 16.0, "haproxy-matched": 20.0}
    pairs = [("elastin", "haproxy"), ("elastin-full", "haproxy-matched"), ("elastin", "caddy")]
    assert common.ratio_rows(cpu, pairs, "cpu_us_per_req") == [
        ("elastin", "cpu_us_per_req_ratio_vs_haproxy", 1.25),
        ("elastin-full", "cpu_us_per_req_ratio_vs_haproxy_matched", 1.1),
    ]  # caddy was not measured in this run: no row


@pytest.mark.parametrize("case", ["http1_keepalive", "tcp", "http2", "grpc_unary"])
def test_matched_haproxy_has_elastins_full_features(peers: ModuleType, case: str) -> None:
    raw = peers.raw_haproxy_cfg(case, 18000, H1, H2)
    matched = peers.matched_haproxy_cfg(case, 18000, H1, H2)
    assert "log" not in raw and "check" not in raw
    assert "log stdout format raw" in matched and "log-format" in matched
    assert matched.count(" check inter 2s") == 2 and "observe layer" in matched
    assert "retries 2" in matched
    if case != "tcp":
        assert "retry-on conn-failure empty-response response-timeout" in matched
        assert "http-request set-header traceparent" in matched
    if case in ("http2", "grpc_unary"):
        assert "proto h2" in matched and "18003" in matched


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")
@pytest.mark.parametrize("case", ["http1_keepalive", "tcp", "grpc_unary"])
def test_haproxy_accepts_both_hand_written_configs(
    peers: ModuleType, case: str, tmp_path: Path
) -> None:
    for make in (peers.raw_haproxy_cfg, peers.matched_haproxy_cfg):
        cfg = tmp_path / "h.cfg"
        cfg.write_text(make(case, 18000, H1, H2))
        proc = subprocess.run(
            [str(HAPROXY), "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_traefik_and_caddy_configs(peers: ModuleType, tmp_path: Path) -> None:
    argv = peers.traefik_files("grpc_unary", 18000, H1, H2, tmp_path / "t")
    assert argv == [f"--configFile={tmp_path / 't' / 'traefik.yml'}"]
    dynamic = (tmp_path / "t" / "dynamic.yml").read_text()
    assert 'url: "h2c://127.0.0.1:18003"' in dynamic and "18004" in dynamic
    peers.traefik_files("tcp", 18000, H1, H2, tmp_path / "tcp")
    assert "HostSNI(`*`)" in (tmp_path / "tcp" / "dynamic.yml").read_text()
    assert peers.caddyfile("tcp", 18000, H1, H2) is None  # no TCP proxy in Caddy's build
    caddy = peers.caddyfile("http2", 18000, H1, H2)
    assert "reverse_proxy 127.0.0.1:18003 127.0.0.1:18004" in caddy and "versions h2c" in caddy
    assert "h2c" not in peers.caddyfile("http1_keepalive", 18000, H1, H2).split("}", 2)[-1]


def test_elastin_full_renders_every_request_logged_and_traced(
    proxy: ModuleType, tmp_path: Path
) -> None:
    """Guards FULL_POLICY: when the mesh model's access log / tracing fields change
    (sampled defaults), this fails until FULL_POLICY names the fields for "everything"."""
    p = proxy.Ports(H1, H2)
    paths = HaproxyProcess(tmp_path, "haproxy").paths()
    full = render(proxy.elastin_snapshot("http1_keepalive", 18000, p, 18009, True), paths)
    frontend = full.split("frontend l_web.api", 1)[1].split("\nbackend ", 1)[0]
    assert "    log-format '" in frontend and "no log" not in frontend
    assert "dontlog-normal" not in full and "set-log-level silent" not in full
    trace = [x for x in frontend.splitlines() if "set-header traceparent" in x]
    assert len(trace) == 1 and "rand(" not in trace[0] and '-01"' in trace[0]


def test_an_haproxy_that_is_none_is_named(
    proxy: ModuleType, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert proxy.main(["--quick", "--haproxy", str(tmp_path / "haproxy")]) == 2
    assert f"--haproxy {tmp_path / 'haproxy'}: no executable file there" in capsys.readouterr().err
    fake = tmp_path / "fake"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    assert proxy.main(["--quick", "--haproxy", str(fake)]) == 2
    assert "names no HAProxy version" in capsys.readouterr().err


def test_unknown_case_is_named(proxy: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert proxy.main(["--quick", "--cases", "http3"]) == 2
    err = capsys.readouterr().err
    assert "unknown case or system 'http3'" in err and "http1_rate_5000" in err


TOOLS = ("wrk", "h2load", "nginx", "taskset")


@pytest.mark.integration
@pytest.mark.skipif(
    HAPROXY is None or any(shutil.which(t, path="/usr/sbin:/usr/bin:/bin") is None for t in TOOLS),
    reason="needs haproxy, nginx, wrk, h2load and taskset (make setup installs them)",
)
def test_quick_run_prints_every_system_and_ratio(
    proxy: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert proxy.main(["--quick", "--json", "--no-install"]) == 0  # CI: no 235 MB download
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["bench"] == "proxy" and set(doc["machine"]) == {"cpus", "python"}
    rows = doc["results"]
    version = proxy.haproxy_release(HAPROXY)
    assert version.startswith("3.")  # the mesh's own HAProxy, not the first one on PATH
    for row in rows:
        assert set(row) == {"case", "system", "metric", "value", "runs", "haproxy_version"}
        assert row["haproxy_version"] == version
    assert {r["case"] for r in rows} == {"http1_keepalive", "http1_rate_5000"}
    skipped = {s for s in ("traefik", "caddy") if f"{s} skipped" in captured.err}
    for case in ("http1_keepalive", "http1_rate_5000"):
        have = {(r["system"], r["metric"]) for r in rows if r["case"] == case}
        for system in set(proxy.SYSTEMS) - skipped:
            assert (system, "rps") in have and (system, "p99_ms") in have, (case, system)
            if system != "direct":
                assert (system, "cpu_us_per_req") in have, (case, system)
        assert ("elastin", "cpu_us_per_req_ratio_vs_haproxy") in have
        assert ("elastin-full", "cpu_us_per_req_ratio_vs_haproxy_matched") in have
        assert ("elastin", "cpu_us_per_req_ratio_vs_nginx") in have
        for peer in {"traefik", "caddy"} - skipped:
            assert ("elastin", f"cpu_us_per_req_ratio_vs_{peer}") in have
        assert ("elastin-full", "logged_per_req") in have


@pytest.mark.integration
@pytest.mark.skipif(
    HAPROXY is None or any(shutil.which(t, path="/usr/sbin:/usr/bin:/bin") is None for t in TOOLS),
    reason="needs haproxy, nginx, wrk, h2load and taskset (make setup installs them)",
)
def test_each_run_counts_its_own_log_lines(
    proxy: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each start of a system gets a directory of its own: a second run of elastin-full
    reused the first run's log file, so its lines were counted again (the full run of
    2026-12-06 showed 2.0 lines per request). More than a ring's worth of lines per run,
    else the collector, finding the old file, takes the new lines for a replay."""
    argv = ["--json", "--runs", "2", "--seconds", "3", "--cases", "http1_rate_5000"]
    assert proxy.main([*argv, "--systems", "haproxy-matched,elastin-full"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    logged = {r["system"]: r["value"] for r in rows if r["metric"] == "logged_per_req"}
    assert set(logged) == {"haproxy-matched", "elastin-full"}
    assert all(0 < v <= 1.01 for v in logged.values()), logged


DEBIAN_HAPROXY = "/usr/sbin/haproxy"


@pytest.mark.integration
@pytest.mark.skipif(
    not Path(DEBIAN_HAPROXY).exists()
    or any(shutil.which(t, path="/usr/sbin:/usr/bin:/bin") is None for t in TOOLS),
    reason="needs Debian's haproxy, nginx, wrk, h2load and taskset",
)
def test_haproxy_option_runs_every_haproxy_with_that_binary(
    proxy: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--haproxy`` measures the raw peer and Elastin's mesh with the same binary (the run
    stops when a system runs another one), and the rows say which version."""
    argv = ["--json", "--quick", "--cases", "http1_keepalive", "--systems", "haproxy,elastin"]
    assert proxy.main([*argv, "--haproxy", DEBIAN_HAPROXY]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    want = proxy.haproxy_release(DEBIAN_HAPROXY)
    assert {r["haproxy_version"] for r in rows} == {want} and not want.startswith("3.")
    assert {r["system"] for r in rows if r["metric"] == "cpu_us_per_req"} == {"haproxy", "elastin"}

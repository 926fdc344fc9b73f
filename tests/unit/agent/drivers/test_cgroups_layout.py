"""Cgroup layout and limit files for v1 and v2, on fake hierarchies in a temporary directory
(the real hierarchies are exercised by the integration tests on this machine's cgroups)."""

from __future__ import annotations

from pathlib import Path

from elastin.agent.drivers.cgroups import Cgroup, detect_cgroups
from elastin.model.resources import Resources


def test_detect_v2_v1_hybrid_and_none(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    assert detect_cgroups(v2).version == "v2"
    v2b = tmp_path / "v2b"
    v2b.mkdir()
    (v2b / "cgroup.controllers").write_text("cpuset io\n")
    info = detect_cgroups(v2b)
    assert not info.writable and "cpu" in info.reason
    v1 = tmp_path / "v1"
    for c in ("cpu", "cpuacct", "memory", "pids", "unified"):
        (v1 / c).mkdir(parents=True)
    (v1 / "memory" / "cgroup.procs").write_text("")
    assert detect_cgroups(v1).version == "hybrid"
    assert "no cgroup" in detect_cgroups(tmp_path / "nothing").reason


def test_v2_limits(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    cg = Cgroup("elastin", "a1", version="v2", base=tmp_path)
    d = tmp_path / "elastin" / "a1"
    d.mkdir(parents=True)
    (d / "memory.swap.max").write_text("max")
    cg.create(Resources(1500, 256 << 20, 0), 0)
    assert (d / "cpu.max").read_text() == "150000 100000"
    assert (d / "memory.max").read_text() == str(256 << 20)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "pids.max").read_text() == "1024"
    assert "+memory" in (tmp_path / "elastin" / "cgroup.subtree_control").read_text()
    (d / "cpu.stat").write_text("usage_usec 2500\nuser_usec 2000\n")
    (d / "memory.current").write_text("1000000\n")
    (d / "memory.stat").write_text("anon 500000\ninactive_file 200000\n")
    (d / "memory.events").write_text("oom 1\noom_kill 2\n")
    assert cg.cpu_usage_ns() == 2_500_000
    assert cg.memory_bytes() == 800_000
    assert cg.oom_kills() == 2


def test_v1_limits_and_minimum_quota(tmp_path: Path) -> None:
    for c in ("cpu", "cpuacct", "memory", "pids", "freezer"):
        (tmp_path / c).mkdir()
    cg = Cgroup("elastin", "a1", version="v1", base=tmp_path)
    cg.create(Resources(5, 64 << 20, 0), 32)
    assert (tmp_path / "cpu/elastin/a1/cpu.cfs_quota_us").read_text() == "1000"  # 1 ms floor
    assert (tmp_path / "memory/elastin/a1/memory.limit_in_bytes").read_text() == str(64 << 20)
    assert (tmp_path / "pids/elastin/a1/pids.max").read_text() == "32"
    (tmp_path / "memory/elastin/a1/memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"
    )
    assert cg.oom_kills() == 1
    assert len(cg.paths()) == 5

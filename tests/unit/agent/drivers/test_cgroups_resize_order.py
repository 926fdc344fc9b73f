"""``Cgroup.resize`` on a fake v1 hierarchy: a memory write the kernel refuses leaves the cpu
quota as it was (memory is written first, cpu last), so a resize reported "not applied" did
not apply half of itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from elastin.agent.drivers.cgroups import Cgroup, CgroupError
from elastin.model.resources import Resources

MI = 1 << 20


def v1_cgroup(tmp_path: Path) -> Cgroup:
    for c in ("cpu", "cpuacct", "memory", "pids", "freezer"):
        (tmp_path / c).mkdir()
    cg = Cgroup("elastin", "a1", version="v1", base=tmp_path)
    cg.create(Resources(200, 64 << 20, 0), 32)
    mem = tmp_path / "memory/elastin/a1"
    (mem / "memory.usage_in_bytes").write_text(str(10 * MI))
    (mem / "memory.stat").write_text("total_inactive_file 0\n")
    return cg


def test_a_refused_memory_write_leaves_the_cpu_quota(tmp_path: Path) -> None:
    cg = v1_cgroup(tmp_path)
    quota = tmp_path / "cpu/elastin/a1/cpu.cfs_quota_us"
    limit = tmp_path / "memory/elastin/a1/memory.limit_in_bytes"
    assert quota.read_text() == "20000"
    limit.unlink()
    limit.mkdir()  # the kernel refuses the write (as EBUSY would)
    with pytest.raises(CgroupError, match=r"memory\.limit_in_bytes"):
        cg.resize(Resources(500, 128 * MI))
    assert quota.read_text() == "20000"  # unchanged: the resize did not half apply


def test_a_resize_writes_both(tmp_path: Path) -> None:
    cg = v1_cgroup(tmp_path)
    assert cg.resize(Resources(500, 128 * MI)) == Resources(500, 128 * MI)
    assert (tmp_path / "cpu/elastin/a1/cpu.cfs_quota_us").read_text() == "50000"


def test_a_refused_cpu_write_puts_the_memory_limit_back(tmp_path: Path) -> None:
    cg = v1_cgroup(tmp_path)
    quota = tmp_path / "cpu/elastin/a1/cpu.cfs_quota_us"
    limit = tmp_path / "memory/elastin/a1/memory.limit_in_bytes"
    quota.unlink()
    quota.mkdir()
    with pytest.raises(CgroupError, match=r"cpu\.cfs_quota_us"):
        cg.resize(Resources(500, 128 * MI))
    assert limit.read_text() == str(64 * MI)

"""Cgroups for instances, v1 and v2: create, limit, join, measure, kill, remove.

Layout: a root directory (``elastin`` by default) under each controller, and one cgroup per
allocation below it::

    v1:  /sys/fs/cgroup/{cpu,cpuacct,memory,pids,freezer}/elastin/<alloc id>
    v2:  /sys/fs/cgroup/elastin/<alloc id>       (cpu, memory, pids enabled on the parent)

Hybrid machines (v1 controllers plus a cgroup2 mount without cpu/memory, like the ones this
project is tested on) use the v1 hierarchies. Limits: cpu as a CFS quota per 100 ms period,
memory as a hard limit (swap off where the kernel accounts it), pids as a process count.

A process must *start* inside its cgroup for memory to be charged to it, so the task driver
writes the new process's pid into ``cgroup.procs`` before it execs the workload
(``Cgroup.join_self`` runs in the child).

``Cgroup.resize`` changes a running instance's cpu quota and memory limit in place (the same
processes, no restart): a memory limit below what the instance uses now (its working set) is
refused rather than left to the kernel, which would reclaim what it can and then OOM-kill the
instance; page cache above the new limit is reclaimed by the kernel. On v1 the memory+swap
limit moves with the memory limit, in the order the kernel accepts (memsw >= memory). Memory
is written before the cpu quota: a memory write the kernel refuses leaves the cpu quota as it
was (and a cpu write that fails puts the memory limit back), so a resize reported as not
applied changed nothing.

Exceptions: ``CgroupError`` (a ``DriverError``) with the path and the OS error;
``ResizeRefused`` when a resize would cut below the instance's use.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from elastin.agent.drivers.base import DriverError, ResizeRefused
from elastin.clock import SYSTEM, Clock
from elastin.model.resources import Resources

BASE = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "freezer")
CFS_PERIOD_US = 100_000
DEFAULT_PIDS = 1024
MIN_MEMORY = 4 * 1024 * 1024  # the spec's least; the kernel takes less, but nothing runs in it
MIN_QUOTA_US = 1000  # the kernel's least CFS quota (1 ms)


class CgroupError(DriverError):
    """A cgroup could not be created, written or removed."""


@dataclass(frozen=True)
class CgroupInfo:
    version: str  # "v1", "v2", "hybrid", "" (none usable)
    writable: bool
    reason: str = ""


def detect_cgroups(base: Path = BASE) -> CgroupInfo:
    """Which cgroup version this machine offers for instances, and whether we can write it."""
    if (base / "cgroup.controllers").exists():
        ctrls = (base / "cgroup.controllers").read_text().split()
        missing = [c for c in ("cpu", "memory", "pids") if c not in ctrls]
        if missing:
            return CgroupInfo("v2", False, f"cgroup v2 lacks controllers: {', '.join(missing)}")
        return CgroupInfo(
            "v2",
            os.access(base, os.W_OK),
            "" if os.access(base, os.W_OK) else f"{base} is not writable (run the agent as root)",
        )
    if (base / "memory" / "cgroup.procs").exists():
        version = "hybrid" if (base / "unified").is_dir() else "v1"
        needed = [c for c in ("cpu", "cpuacct", "memory", "pids") if not (base / c).is_dir()]
        if needed:
            return CgroupInfo(version, False, f"cgroup v1 controllers missing: {', '.join(needed)}")
        ok = all(os.access(base / c, os.W_OK) for c in ("cpu", "cpuacct", "memory", "pids"))
        return CgroupInfo(version, ok, "" if ok else "cgroups are not writable (run as root)")
    return CgroupInfo("", False, f"no cgroup hierarchy found under {base}")


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        raise CgroupError(f"cannot write {value!r} to {path}: {e.strerror}") from None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _stat_map(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


class Cgroup:
    """The cgroup(s) of one instance."""

    def __init__(self, root: str, name: str, *, version: str, base: Path = BASE) -> None:
        self.version = "v2" if version == "v2" else "v1"
        self.base = base
        self.root = root
        self.name = name
        if self.version == "v2":
            self.dirs = {"unified": base / root / name}
        else:
            dirs: dict[str, Path] = {}
            seen: set[Path] = set()
            for c in V1_CONTROLLERS:
                d = base / c
                if not d.is_dir():
                    continue
                real = d.resolve()
                if real in seen:
                    dirs[c] = real / root / name
                    continue
                seen.add(real)
                dirs[c] = real / root / name
            self.dirs = dirs

    def _dir(self, controller: str) -> Path:
        return self.dirs["unified"] if self.version == "v2" else self.dirs[controller]

    def paths(self) -> list[str]:
        return sorted({str(p) for p in self.dirs.values()})

    def create(self, resources: Resources, pids_limit: int) -> None:
        try:
            if self.version == "v2":
                parent = self.base / self.root
                parent.mkdir(exist_ok=True)
                with contextlib.suppress(OSError):
                    (self.base / "cgroup.subtree_control").write_text("+cpu +memory +pids")
                _write(parent / "cgroup.subtree_control", "+cpu +memory +pids")
                self.dirs["unified"].mkdir(exist_ok=True)
            else:
                for d in set(self.dirs.values()):
                    d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CgroupError(f"cannot create cgroup {self.name}: {e.strerror}") from None
        self.set_limits(resources, pids_limit)

    def set_limits(self, resources: Resources, pids_limit: int) -> None:
        quota = cpu_quota(resources.cpu)
        pids = pids_limit or DEFAULT_PIDS
        if self.version == "v2":
            d = self.dirs["unified"]
            _write(d / "cpu.max", f"{quota} {CFS_PERIOD_US}")
            _write(d / "memory.max", str(resources.memory))
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
            _write(d / "pids.max", str(pids))
            return
        cpu = self.dirs["cpu"]
        _write(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(quota))
        mem = self.dirs["memory"]
        _write(mem / "memory.limit_in_bytes", str(resources.memory))
        if (mem / "memory.memsw.limit_in_bytes").exists():
            with contextlib.suppress(CgroupError):
                _write(mem / "memory.memsw.limit_in_bytes", str(resources.memory))
        if (mem / "memory.swappiness").exists():
            with contextlib.suppress(CgroupError):
                _write(mem / "memory.swappiness", "0")
        _write(self.dirs["pids"] / "pids.max", str(pids))

    def limits(self) -> Resources:
        """The cpu (millicores, from the CFS quota) and memory limits written now (0: none)."""
        if self.version == "v2":
            d = self.dirs["unified"]
            cpu_max = _read(d / "cpu.max").split()
            quota = int(cpu_max[0]) if cpu_max and cpu_max[0].isdigit() else 0
            period = int(cpu_max[1]) if len(cpu_max) > 1 and cpu_max[1].isdigit() else 0
            mem = _read(d / "memory.max").strip()
        else:
            q = _read(self.dirs["cpu"] / "cpu.cfs_quota_us").strip()
            quota = int(q) if q.isdigit() else 0
            per = _read(self.dirs["cpu"] / "cpu.cfs_period_us").strip()
            period = int(per) if per.isdigit() else 0
            mem = _read(self.dirs["memory"] / "memory.limit_in_bytes").strip()
        cpu = quota * 1000 // period if quota and period else 0
        return Resources(cpu=cpu, memory=int(mem) if mem.isdigit() else 0)

    def resize(self, resources: Resources) -> Resources:
        """Write a new cpu quota and memory limit for the running instance (same processes);
        the limits as written (``limits``). ``ResizeRefused`` when the memory limit would be
        below the instance's working set, or below ``MIN_MEMORY``; ``CgroupError`` when the
        kernel refuses a write (v1: it could not reclaim enough cache, ``EBUSY``)."""
        if resources.memory < MIN_MEMORY:
            raise ResizeRefused(
                f"a memory limit of {resources.memory} bytes is below the least an instance "
                f"may have ({MIN_MEMORY} bytes, 4Mi)"
            )
        if resources.cpu <= 0:
            raise ResizeRefused(f"a cpu limit must be above 0, not {resources.cpu}m")
        used = self.memory_bytes()
        if resources.memory < used:
            raise ResizeRefused(
                f"the instance uses {used} bytes now, more than the new memory limit of "
                f"{resources.memory} bytes: the kernel would OOM-kill it. Give it at least "
                "what it uses (or restart it with the smaller limit)"
            )
        # memory first, cpu last: memory is the write the kernel may refuse (v1: EBUSY when
        # it cannot reclaim enough cache), and a refused resize must leave both as they were
        before = self.limits()
        self._write_memory(resources.memory, before.memory)
        try:
            self._write_cpu(resources.cpu)
        except CgroupError:
            with contextlib.suppress(CgroupError):  # put memory back as it was
                self._write_memory(before.memory, resources.memory)
            raise
        return self.limits()

    def _write_memory(self, value: int, now: int) -> None:
        """The memory limit (v1: with memory+swap, in the order the kernel accepts)."""
        if self.version == "v2":
            _write(self.dirs["unified"] / "memory.max", str(value))
            return
        mem = self.dirs["memory"]
        limit, memsw = mem / "memory.limit_in_bytes", mem / "memory.memsw.limit_in_bytes"
        if not memsw.exists():
            _write(limit, str(value))
        elif value >= now:  # raising: memsw first (memsw >= mem)
            _write(memsw, str(value))
            _write(limit, str(value))
        else:  # lowering: the memory limit first
            _write(limit, str(value))
            _write(memsw, str(value))

    def _write_cpu(self, millicores: int) -> None:
        quota = str(cpu_quota(millicores))
        if self.version == "v2":
            _write(self.dirs["unified"] / "cpu.max", f"{quota} {CFS_PERIOD_US}")
        else:
            _write(self.dirs["cpu"] / "cpu.cfs_quota_us", quota)

    def join_self(self) -> None:
        """Move the calling process into every hierarchy (used in the child before exec)."""
        pid = str(os.getpid())
        for d in set(self.dirs.values()):
            (d / "cgroup.procs").write_text(pid)

    def pids(self) -> set[int]:
        out: set[int] = set()
        for d in set(self.dirs.values()):
            out |= {int(x) for x in _read(d / "cgroup.procs").split()}
        return out

    def cpu_usage_ns(self) -> int:
        if self.version == "v2":
            return _stat_map(_read(self.dirs["unified"] / "cpu.stat")).get("usage_usec", 0) * 1000
        text = _read(self.dirs["cpuacct"] / "cpuacct.usage").strip()
        return int(text) if text.isdigit() else 0

    def memory_bytes(self) -> int:
        """Working set: usage minus inactive file cache (what kubelet reports)."""
        if self.version == "v2":
            d = self.dirs["unified"]
            usage = int(_read(d / "memory.current").strip() or 0)
            inactive = _stat_map(_read(d / "memory.stat")).get("inactive_file", 0)
        else:
            d = self.dirs["memory"]
            usage = int(_read(d / "memory.usage_in_bytes").strip() or 0)
            inactive = _stat_map(_read(d / "memory.stat")).get("total_inactive_file", 0)
        return max(0, usage - inactive)

    def oom_kills(self) -> int:
        if self.version == "v2":
            return _stat_map(_read(self.dirs["unified"] / "memory.events")).get("oom_kill", 0)
        stats = _stat_map(_read(self.dirs["memory"] / "memory.oom_control"))
        return stats.get("oom_kill", 0)

    def kill_all(self, sig: int = signal.SIGKILL, spare: int = 0) -> int:
        """Signal every process in the cgroup (but ``spare``); returns how many were signalled."""
        n = 0
        for pid in self.pids():
            if pid == spare:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                n += 1
        return n

    def destroy(self, timeout: float = 5.0, clock: Clock = SYSTEM) -> None:
        """Kill what is left and remove the cgroup directories (blocking: the kernel lets
        the last processes go within milliseconds)."""
        deadline = clock.monotonic() + timeout
        while self.pids() and clock.monotonic() < deadline:
            self.kill_all(signal.SIGKILL)
            time.sleep(0.02)
        for d in set(self.dirs.values()):
            _rmdir(d, tries=50)


def cpu_quota(millicores: int) -> int:
    """The CFS quota (µs per ``CFS_PERIOD_US``) of ``millicores`` (500m → 50,000)."""
    return max(MIN_QUOTA_US, millicores * CFS_PERIOD_US // 1000)


def _rmdir(d: Path, tries: int) -> None:
    """Remove a cgroup directory, retrying while the kernel lets its last processes go."""
    for _ in range(tries):
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


def destroy_root(root: str, base: Path = BASE, timeout: float = 5.0, clock: Clock = SYSTEM) -> None:
    """Kill every process under ``root`` (all hierarchies) and remove its cgroups.

    For tests and for wiping a node; the agent itself removes one instance's cgroup at a time.
    """
    roots = {p.resolve() / root for p in base.iterdir() if (p / root).is_dir()}
    if (base / root / "cgroup.procs").exists():
        roots.add(base / root)
    deadline = clock.monotonic() + timeout
    while clock.monotonic() < deadline:
        pids: set[int] = set()
        for r in roots:
            for procs in r.rglob("cgroup.procs"):
                pids |= {int(x) for x in _read(procs).split()}
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    for r in roots:
        dirs = sorted((p for p in r.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, r]:
            _rmdir(d, tries=20)

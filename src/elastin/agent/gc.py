"""Garbage collection of allocation directories (``<data_dir>/allocs/<alloc_id>``).

A directory stays after its allocation ends, so that its logs can still be read. Once the
agent no longer knows the allocation (no runner: the server deleted it or moved on) and it
has been idle for ``GcPolicy.retention`` (4 hours by default, Nomad's ``job_gc_threshold``),
the directory is removed. When the data disk is used above ``GcPolicy.disk_threshold`` (80 %,
Nomad's ``gc_disk_usage_threshold``), such directories go earlier, oldest first, until the
disk is below the threshold again.

Never collected: the directory of an allocation the agent runs, and of one whose handle is
kept in ``<data_dir>/agent/handles`` (an instance a restarted agent
re-attaches to).

Pure (unit-tested): ``plan`` which directories to remove, in order, and whether each may go
only while the disk is low. I/O (thin): ``scan`` the directories and when each was last
active, ``disk_used``, ``held_by_handles``, ``claim`` (rename one aside, on the agent's loop),
``collect`` (remove what ``plan`` says and ``claim`` gave, with ``rm -rf``: a tree a workload
made thousands of directories deep is removed too).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("elastin.agent")

RETENTION = 4 * 3600.0  # seconds an unknown allocation directory is kept after its last write
DISK_THRESHOLD = 0.8  # used fraction of the data disk above which directories go earlier
GC_INTERVAL = 60.0  # seconds between collections (Nomad's gc_interval)


@dataclass(frozen=True)
class GcPolicy:
    retention: float = RETENTION
    disk_threshold: float = DISK_THRESHOLD

    def __post_init__(self) -> None:
        if self.retention < 0:
            raise ValueError("the retention of allocation directories must be >= 0 seconds")
        if not 0 < self.disk_threshold <= 1:
            raise ValueError("the disk threshold of the allocation GC must be in (0, 1]")


@dataclass(frozen=True)
class AllocDir:
    name: str  # the allocation id
    last_active: float  # newest mtime of the directory, its files and its logs (epoch s)


@dataclass(frozen=True)
class Removal:
    name: str
    expired: bool  # past the retention; False: removed only because the disk is low


def plan(
    dirs: Iterable[AllocDir],
    keep: Collection[str],
    now: float,
    policy: GcPolicy,
    disk_low: bool,
) -> list[Removal]:
    """Which directories to remove, oldest first: those not in ``keep`` that are past the
    retention; with ``disk_low`` also the others not in ``keep`` (``expired=False``: the
    caller stops removing those once the disk is no longer low)."""
    out: list[Removal] = []
    for d in sorted(dirs, key=lambda d: (d.last_active, d.name)):
        if d.name in keep:
            continue
        expired = now - d.last_active >= policy.retention
        if expired or disk_low:
            out.append(Removal(d.name, expired))
    return out


# --------------------------------------------------------------------------- I/O


def _last_active(path: Path) -> float:
    newest = os.lstat(path).st_mtime
    for sub in (path, path / "logs"):
        with contextlib.suppress(OSError), os.scandir(sub) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest


def scan(alloc_root: Path) -> list[AllocDir]:
    """The allocation directories under ``alloc_root`` (real directories, not links)."""
    out: list[AllocDir] = []
    try:
        entries = list(os.scandir(alloc_root))
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        with contextlib.suppress(OSError):
            out.append(AllocDir(entry.name, _last_active(Path(entry.path))))
    return out


def held_by_handles(handles_dir: Path) -> set[str]:
    """Allocations whose instance handle is kept (``<id>.json``, or its ``<id>.tmp``)."""
    try:
        names = os.listdir(handles_dir)
    except FileNotFoundError:
        return set()
    return {n.rsplit(".", 1)[0] for n in names if n.endswith((".json", ".tmp"))}


def disk_used(path: Path) -> float:
    """The used fraction of the filesystem holding ``path`` (as ``df`` counts it)."""
    st = os.statvfs(path)
    usable = st.f_blocks - st.f_bfree + st.f_bavail
    return 1.0 if usable <= 0 else (st.f_blocks - st.f_bfree) / usable


GC_PREFIX = ".gc-"  # a directory claimed for removal (renamed so; swept at the next pass)


def claim(alloc_root: Path, name: str) -> Path | None:
    """Take ``alloc_root/name`` away for removal in one step (a rename to ``.gc-<name>``);
    None when it is gone. Called on the agent's loop after checking that no runner or handle
    holds the allocation, so a runner never loses a directory it is using."""
    target = alloc_root / f"{GC_PREFIX}{name}"
    try:
        os.rename(alloc_root / name, target)
    except FileNotFoundError:
        return None
    return target


def remove_tree(path: Path) -> None:
    """Remove a directory tree a workload wrote: not recursive in Python (a tree thousands
    deep raised RecursionError in ``shutil.rmtree``), never following a link, never leaving
    the file system. Raises OSError with ``rm``'s message when it could not."""
    proc = subprocess.run(
        ["rm", "-rf", "--one-file-system", "--", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise OSError(f"rm -rf {path}: {proc.stderr.strip() or proc.returncode}")


def collect(
    alloc_root: Path,
    dirs: Iterable[AllocDir],
    take: Callable[[str], Path | None],
    now: float,
    policy: GcPolicy,
) -> list[str]:
    """Remove the directories ``plan`` gives for ``dirs`` (from ``scan``), each after
    ``take(name)`` claimed it (None: it is held, keep it), and what an earlier pass claimed
    and did not finish; the ids removed. Blocking: call it in a thread."""
    dirs = list(dirs)
    for leftover in _claimed(alloc_root):
        _remove(leftover)
    low = bool(dirs) and disk_used(alloc_root) >= policy.disk_threshold
    removed: list[str] = []
    for r in plan(dirs, (), now, policy, low):
        if not r.expired and disk_used(alloc_root) < policy.disk_threshold:
            break  # room again: the rest waits for its retention
        taken = take(r.name)
        if taken is not None and _remove(taken):
            removed.append(r.name)
    return removed


def _claimed(alloc_root: Path) -> list[Path]:
    try:
        return [alloc_root / n for n in os.listdir(alloc_root) if n.startswith(GC_PREFIX)]
    except FileNotFoundError:
        return []


def _remove(path: Path) -> bool:
    try:
        remove_tree(path)
    except OSError as e:
        log.warning("cannot remove the allocation directory %s: %s", path, e)
        return False
    return True

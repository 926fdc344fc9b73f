"""Log files the agent keeps within bounds: ``rotate`` copy-truncates a file that passed
its size limit, so that the writer (a workload's stdout, the mesh's access log collector)
goes on appending to the same file at its new end.

Used by the task driver (workload logs) and the mesh manager (the access log).
"""

from __future__ import annotations

import shutil
from pathlib import Path


def rotate(path: Path, max_bytes: int, keep: int) -> bool:
    """Copy-truncate ``path`` when it is larger than ``max_bytes``; True when rotated."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except OSError:
        return False
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{i + 1}"))
    if keep > 0:
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with open(path, "r+b") as f:
        f.truncate(0)
    return True

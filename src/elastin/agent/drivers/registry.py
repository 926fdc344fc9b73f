"""The drivers an agent offers: today ``task``; ``container`` and ``vm`` join in later issues.

Workloads of a kind whose driver this node lacks stay pending with that reason.
"""

from __future__ import annotations

import os

from elastin.agent.drivers.base import Driver
from elastin.agent.drivers.task import TaskDriver


def default_drivers(cgroup_root: str = "") -> dict[str, Driver]:
    """The drivers of this node; the cgroup root is ``ELASTIN_CGROUP_ROOT`` or ``elastin``."""
    root = cgroup_root or os.environ.get("ELASTIN_CGROUP_ROOT", "") or "elastin"
    return {"task": TaskDriver(cgroup_root=root)}

"""Benchmark: what running an instance as a dynamic user in its own mount namespace costs.

The task driver starts ``/bin/true`` and waits for its exit, alternately as ``user: root``
(the node as it is: the shim joins the cgroups and starts the command) and as a dynamic user
(the default: ``unshare --mount``, the covers and binds of its view, ``setpriv``), with the
allocation directory inside a 0700 data directory as on a node. A/B pairs in one run; the
direct path (``subprocess`` with no cgroup) beside them. Needs root (cgroups). Usage::

    python bench/sandbox.py [--runs 30] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Row, emit
from elastin.agent.drivers.base import InstanceConfig
from elastin.agent.drivers.cgroups import destroy_root
from elastin.agent.drivers.task import TaskDriver
from elastin.model.resources import Resources

TRUE = "/bin/true"


async def start_to_exit(driver: TaskDriver, data: Path, alloc: str, user: str) -> float:
    """Milliseconds from asking the driver to start an instance to its exit."""
    config = InstanceConfig(
        alloc,
        alloc,
        (TRUE,),
        {"PATH": "/usr/bin:/bin"},
        "",
        Resources(200, 64 << 20, 0),
        str(data / "allocs" / alloc),
        user=user,
    )
    t0 = time.perf_counter()
    handle = await driver.start(config)
    result = await driver.wait(handle)
    took = (time.perf_counter() - t0) * 1000
    await driver.cleanup(handle)
    if result.exit_code != 0:
        raise SystemExit(f"{TRUE} as {user or 'a dynamic user'} failed: {result.describe()}")
    return took


def direct() -> float:
    t0 = time.perf_counter()
    subprocess.run([TRUE], check=True)
    return (time.perf_counter() - t0) * 1000


async def measure(runs: int) -> list[Row]:
    root = f"elastin-bench-{secrets.token_hex(3)}"
    driver = TaskDriver(root)
    tmp = Path(tempfile.mkdtemp(prefix="elastin-sandbox-"))
    data = tmp / "data"
    (data / "allocs").mkdir(parents=True)
    data.chmod(0o700)
    as_root: list[float] = []
    dynamic: list[float] = []
    plain: list[float] = []
    try:
        for i in range(runs):  # A/B pairs: the machine's drift hits both alike
            as_root.append(await start_to_exit(driver, data, f"r{i}", "root"))
            dynamic.append(await start_to_exit(driver, data, f"d{i}", ""))
            plain.append(direct())
    finally:
        destroy_root(root)
        shutil.rmtree(tmp, ignore_errors=True)
    case = "start to exit of /bin/true"
    extra = tuple(d - r for d, r in zip(dynamic, as_root, strict=True))
    return [
        Row(case, "direct (no cgroup)", "latency_ms", tuple(plain)),
        Row(case, "elastin user: root", "latency_ms", tuple(as_root)),
        Row(case, "elastin dynamic user", "latency_ms", tuple(dynamic)),
        Row(case, "dynamic - root", "sandbox_cost_ms", extra),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="5 pairs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = asyncio.run(measure(5 if args.quick else args.runs))
    emit("sandbox", rows, as_json=args.json, title="Tasks: the cost of the instance's sandbox")
    return 0


if __name__ == "__main__":
    sys.exit(main())

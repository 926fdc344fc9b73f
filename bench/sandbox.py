"""Benchmark: what running an instance as a dynamic user in its own mount namespace costs.

The task driver starts ``/bin/true`` and waits for its exit, alternately as ``user: root``
(the node as it is: the shim joins the cgroups and starts the command) and as a dynamic user
(the default: ``unshare --mount``, the covers and binds of its view, ``setpriv``), with the
allocation directory inside a 0700 data directory as on a node. A/B pairs in one run; the
direct path (``subprocess`` with no cgroup) beside them.

The log timestamper (docs/drivers.md): A/B pairs of the driver with and without it, per
start (``/bin/true``) and per MiB of output (``OUTPUT_MIB`` MiB of 100-byte lines written by
``head | tr | fold``, start to exit: what the stamping adds, divided by the MiB), and the
timestamper's resident memory while an instance runs. Needs root (cgroups). Usage::

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
OUTPUT_MIB = 16
WRITER = ("sh", "-c", f"head -c {OUTPUT_MIB << 20} /dev/zero | tr '\\0' x | fold -w 99")


async def start_to_exit(
    driver: TaskDriver, data: Path, alloc: str, user: str, command: tuple[str, ...] = (TRUE,)
) -> float:
    """Milliseconds from asking the driver to start an instance to its exit."""
    config = InstanceConfig(
        alloc,
        alloc,
        command,
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
        raise SystemExit(f"{command} as {user or 'a dynamic user'} failed: {result.describe()}")
    return took


async def stamper_rss_kib(driver: TaskDriver, data: Path) -> float:
    """The timestamper's resident memory (KiB) beside a sleeping instance."""
    config = InstanceConfig(
        "rss",
        "rss",
        ("sleep", "60"),
        {"PATH": "/usr/bin:/bin"},
        "",
        Resources(200, 64 << 20, 0),
        str(data / "allocs" / "rss"),
    )
    handle = await driver.start(config)
    try:
        for _ in range(500):
            if Path(f"/proc/{handle.pid}/comm").read_text().strip() == "sleep":
                break
            await asyncio.sleep(0.01)
        stat = Path(f"/proc/{handle.pid}/stat").read_text().rsplit(")", 1)[1].split()
        parent = int(stat[1])  # the timestamper starts the command
        status = Path(f"/proc/{parent}/status").read_text()
        rss = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return float(rss.split()[1])
    finally:
        await driver.stop(handle, 1)
        await driver.wait(handle)
        await driver.cleanup(handle)


async def measure_stamps(runs: int) -> list[Row]:
    root = f"elastin-bench-{secrets.token_hex(3)}"
    stamped, plain = TaskDriver(root, stamp_logs=True), TaskDriver(root, stamp_logs=False)
    if not stamped.stamp_logs:
        return []
    tmp = Path(tempfile.mkdtemp(prefix="elastin-stamps-"))
    data = tmp / "data"
    (data / "allocs").mkdir(parents=True)
    data.chmod(0o700)
    start_s: list[float] = []
    start_p: list[float] = []
    out_s: list[float] = []
    out_p: list[float] = []
    try:
        for i in range(runs):
            start_s.append(await start_to_exit(stamped, data, f"s{i}", ""))
            start_p.append(await start_to_exit(plain, data, f"p{i}", ""))
            out_s.append(await start_to_exit(stamped, data, f"os{i}", "", WRITER))
            out_p.append(await start_to_exit(plain, data, f"op{i}", "", WRITER))
            for name in (f"os{i}", f"op{i}"):  # 16 MiB each: keep the disk clear
                shutil.rmtree(data / "allocs" / name, ignore_errors=True)
        rss = await stamper_rss_kib(stamped, data)
    finally:
        destroy_root(root)
        shutil.rmtree(tmp, ignore_errors=True)
    case = "log timestamper"
    per_start = tuple(s - p for s, p in zip(start_s, start_p, strict=True))
    per_mib = tuple((s - p) / OUTPUT_MIB for s, p in zip(out_s, out_p, strict=True))
    return [
        Row("start to exit of /bin/true", "elastin stamped logs", "latency_ms", tuple(start_s)),
        Row("start to exit of /bin/true", "elastin plain logs", "latency_ms", tuple(start_p)),
        Row(case, "stamped - plain, per start", "cost_ms", per_start),
        Row(f"{OUTPUT_MIB} MiB of output", "elastin stamped logs", "latency_ms", tuple(out_s)),
        Row(f"{OUTPUT_MIB} MiB of output", "elastin plain logs", "latency_ms", tuple(out_p)),
        Row(case, "stamped - plain, per MiB", "cost_ms_per_mib", per_mib),
        Row(case, "timestamper", "rss_kib", (rss,)),
    ]


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
    runs = 5 if args.quick else args.runs
    rows = asyncio.run(measure(runs)) + asyncio.run(measure_stamps(max(3, runs // 3)))
    emit("sandbox", rows, as_json=args.json, title="Tasks: the cost of the instance's sandbox")
    return 0


if __name__ == "__main__":
    sys.exit(main())

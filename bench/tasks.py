"""Benchmark: time from `apply` to running for 1, 10 and 100 task replicas, beside the direct
path (the same processes spawned with subprocess, no control plane, no cgroups), and the cost
of the server + agent process while it supervises 100 tasks.

It starts its own server and agent (`elastin daemon`) with a temporary data directory and a
cgroup root of its own, runs A/B pairs (elastin, direct, elastin, direct, ...) and stops
everything it started. Needs root (cgroups). Usage::

    python bench/tasks.py [--runs 3] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Row, emit
from elastin.agent.drivers.cgroups import destroy_root
from elastin.client.http import Client

SLEEP = "/bin/sleep"
TIMEOUT = 120.0


def spec(n: int) -> str:
    return (
        "app: bench\nservices:\n  s:\n"
        f"    command: [{SLEEP}, '3600']\n"
        "    resources: {cpu: 10m, memory: 16Mi}\n"
        f"    replicas: {n}\n"
    )


@contextlib.contextmanager
def daemon(tmp: Path) -> Iterator[tuple[Client, subprocess.Popen[bytes], dict[str, str]]]:
    data = tmp / "data"
    env = {
        **os.environ,
        "ELASTIN_DATA_DIR": str(data),
        "ELASTIN_CGROUP_ROOT": f"elastin-bench-{secrets.token_hex(3)}",
    }
    log = open(tmp / "daemon.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "elastin.cli.main", "daemon", "--port", "0", "--stop-workloads"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                info = json.loads((data / "server.json").read_text())
                if info["pid"] == proc.pid:
                    break
            if proc.poll() is not None:
                raise SystemExit("the elastin daemon exited: " + (tmp / "daemon.log").read_text())
            time.sleep(0.05)
        client = Client(info["url"], (data / "token").read_text().strip())
        while not client.nodes():
            time.sleep(0.05)
        yield client, proc, env
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        destroy_root(env["ELASTIN_CGROUP_ROOT"])


def running(client: Client) -> int:
    return sum(1 for a in client.allocations(app="bench") if a.status == "running")


def elastin_once(client: Client, n: int) -> float:
    t0 = time.perf_counter()
    client.apply(spec(n), file="bench.yaml")
    deadline = time.monotonic() + TIMEOUT
    while running(client) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"{n} replicas did not all run within {TIMEOUT:.0f}s")
        time.sleep(0.01)
    return time.perf_counter() - t0


def elastin_down(client: Client) -> None:
    client.delete_app("bench")
    deadline = time.monotonic() + TIMEOUT
    while any(not a.terminal for a in client.allocations(app="bench")):
        if time.monotonic() > deadline:
            raise SystemExit("replicas did not stop")
        time.sleep(0.05)


def direct_once(n: int) -> float:
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [SLEEP, "3600"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(n)
    ]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()
    return elapsed


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 and 10 replicas, one run")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--window", type=float, default=10.0, help="seconds to watch 100 tasks")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/tasks.py needs root (tasks run in their own cgroups)", file=sys.stderr)
        return 1
    sizes = (1, 10) if args.quick else (1, 10, 100)
    runs = 1 if args.quick else args.runs
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as d, daemon(Path(d)) as (client, proc, _):
        for n in sizes:
            e_times: list[float] = []
            d_times: list[float] = []
            ratios: list[float] = []
            for _ in range(runs):  # A B A B ...
                e = elastin_once(client, n)
                elastin_down(client)
                dt = direct_once(n)
                e_times.append(e * 1000)
                d_times.append(dt * 1000)
                ratios.append(e / dt if dt else 0.0)
            case = f"apply to running, {n} replica{'s' if n > 1 else ''}"
            rows.append(Row(case, "elastin", "latency_ms", tuple(e_times)))
            rows.append(Row(case, "direct", "latency_ms", tuple(d_times)))
            rows.append(Row(case, "elastin", "latency_ms_ratio_vs_direct", tuple(ratios)))
        # supervising the largest size: the server + agent process's cpu and memory
        n = sizes[-1]
        elastin_once(client, n)
        time.sleep(2)
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.window if not args.quick else 2.0)
        cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0) * 100
        case = f"supervising {n} tasks (server + agent process)"
        rows.append(Row(case, "elastin", "cpu_percent", (cpu,)))
        rows.append(Row(case, "elastin", "rss_mib", (rss_mib(proc.pid),)))
        elastin_down(client)
        client.close()
    emit("tasks", rows, as_json=args.json, title="Tasks: apply to running, and supervision cost")
    return 0


if __name__ == "__main__":
    sys.exit(main())

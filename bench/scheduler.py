"""Scheduler throughput: placements per second on a simulated cluster, one core.

Builds a cluster of simulated nodes (default 10,000) and asks ``elastin.scheduler.schedule``
for a plan that places 100,000 allocations (1,000 workloads x 100 replicas, a mix of task,
container and vm kinds, sizes and a few zone constraints). Cases:

* ``binpack``             default algorithm, empty cluster
* ``spread``              spread algorithm, empty cluster
* ``binpack+preemption``  the cluster is pre-filled to the brim with 100,000 low-priority
                          allocations; every high-priority placement must preempt one

The timed part is the ``schedule`` call on a fresh ``ClusterState`` (building the snapshot's
indexes included). Pure Python, single-threaded. ``--quick`` runs a small size for CI.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Row, emit
from elastin.model.cluster import Allocation, Node
from elastin.model.resources import Resources
from elastin.model.workload import Application, Constraint, Kind, Workload
from elastin.scheduler import ClusterState, SchedulerOptions, schedule

GI = 1 << 30
MI = 1 << 20
NODE_CAPACITY = Resources(16_000, 64 * GI, 500 * GI)


def make_nodes(n: int) -> dict[str, Node]:
    nodes = {}
    for i in range(n):
        drivers = ("task", "container", "vm") if i % 2 == 0 else ("task", "container")
        nid = f"n{i:05d}"
        nodes[nid] = Node(
            id=nid,
            name=f"node-{i}",
            capacity=NODE_CAPACITY,
            drivers=drivers,
            attributes=(("zone", f"z{i % 4}"),),
        )
    return nodes


def mixed_apps(
    workloads: int, replicas: int, seed: int = 7
) -> dict[str, tuple[Application, dict[str, int]]]:
    """``workloads`` workloads in apps of 10, mixed kinds and sizes, 10% zone-constrained."""
    rng = random.Random(seed)
    kinds: list[Kind] = ["task", "task", "task", "task", "task", "task"]
    kinds += ["container", "container", "container", "vm"]
    apps: dict[str, tuple[Application, dict[str, int]]] = {}
    for a in range(0, workloads, 10):
        ws = []
        for k in range(a, min(a + 10, workloads)):
            constraints = (Constraint("zone", "in", ("z0", "z1")),) if rng.random() < 0.1 else ()
            ws.append(
                Workload(
                    name=f"w{k}",
                    kind=rng.choice(kinds),
                    resources=Resources(
                        rng.choice((250, 500, 1000)), rng.choice((256, 512, 1024, 2048)) * MI, GI
                    ),
                    replicas=replicas,
                    priority=rng.choice((40, 50, 60)),
                    constraints=constraints,
                )
            )
        name = f"app{a // 10:04d}"
        apps[name] = (Application(name, tuple(ws)), {w.name: 1 for w in ws})
    return apps


def full_cluster(
    nodes: dict[str, Node], workloads: int, replicas: int
) -> tuple[dict[str, tuple[Application, dict[str, int]]], dict[str, Allocation]]:
    """Low-priority filler that fills every node, plus as many high-priority replicas."""
    per_node = max(1, workloads * replicas // len(nodes))
    size = Resources(NODE_CAPACITY.cpu // per_node, NODE_CAPACITY.memory // per_node, GI)
    node_ids = list(nodes)
    apps: dict[str, tuple[Application, dict[str, int]]] = {}
    allocs: dict[str, Allocation] = {}
    slot = 0
    for a in range(0, workloads, 10):
        low = [
            Workload(name=f"f{k}", resources=size, replicas=replicas, priority=20)
            for k in range(a, min(a + 10, workloads))
        ]
        high = [
            Workload(name=f"h{k}", resources=size, replicas=replicas, priority=80)
            for k in range(a, min(a + 10, workloads))
        ]
        fname, hname = f"filler{a // 10:04d}", f"urgent{a // 10:04d}"
        apps[fname] = (Application(fname, tuple(low)), {w.name: 1 for w in low})
        apps[hname] = (Application(hname, tuple(high)), {w.name: 1 for w in high})
        for w in low:
            for i in range(replicas):
                aid = f"fill-{slot}"
                allocs[aid] = Allocation(
                    id=aid,
                    app=fname,
                    workload=w.name,
                    index=i,
                    node_id=node_ids[slot % len(node_ids)],
                    resources=size,
                    priority=20,
                    spec_version=1,
                    status="running",
                )
                slot += 1
    return apps, allocs


def run_case(
    case: str, nodes: int, workloads: int, replicas: int, seed: int
) -> tuple[float, int, int]:
    """One timed pass: (placements per second, placements, preemptions)."""
    node_map = make_nodes(nodes)
    if case == "binpack+preemption":
        apps, allocs = full_cluster(node_map, workloads, replicas)
        options = SchedulerOptions(algorithm="binpack", preemption=True)
    else:
        apps, allocs = mixed_apps(workloads, replicas), {}
        options = SchedulerOptions(algorithm="spread" if case == "spread" else "binpack")
    counter = itertools.count()
    state = ClusterState(revision=1, nodes=node_map, apps=apps, allocations=allocs)
    t0 = time.perf_counter()
    plan = schedule(state, options, random.Random(seed), lambda: f"a{next(counter)}")
    elapsed = time.perf_counter() - t0
    placed = sum(1 for a in plan.place if a.node_id) + sum(1 for a in plan.update if a.node_id)
    return placed / elapsed if elapsed > 0 else 0.0, placed, len(plan.preempt)


CASES = ("binpack", "spread", "binpack+preemption")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--json", action="store_true", help="print one JSON object (BENCH.md)")
    p.add_argument("--quick", action="store_true", help="small size, one run: a smoke test")
    p.add_argument("--runs", type=int, default=0, help="runs per case (default 3, quick 1)")
    p.add_argument("--nodes", type=int, default=0, help="nodes (default 10000, quick 200)")
    p.add_argument("--workloads", type=int, default=0, help="workloads (default 1000, quick 20)")
    p.add_argument("--replicas", type=int, default=100, help="replicas per workload")
    p.add_argument("--case", choices=CASES, action="append", help="run only these cases")
    args = p.parse_args(argv)
    nodes = args.nodes or (200 if args.quick else 10_000)
    workloads = args.workloads or (20 if args.quick else 1000)
    runs = args.runs or (1 if args.quick else 3)
    total = workloads * args.replicas
    rows = []
    for case in args.case or CASES:
        samples = []
        for run in range(runs):
            rate, placed, preempted = run_case(case, nodes, workloads, args.replicas, seed=run)
            if placed != total:
                print(f"{case}: placed {placed} of {total}", file=sys.stderr)
            if case.endswith("preemption") and preempted == 0:
                print(f"{case}: no preemption happened", file=sys.stderr)
            samples.append(rate)
        rows.append(
            Row(
                f"{case} {nodes} nodes {total} allocs",
                "elastin",
                "placements_per_s",
                tuple(samples),
            )
        )
    emit("scheduler", rows, as_json=args.json, title="Scheduler placements per second (one core)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

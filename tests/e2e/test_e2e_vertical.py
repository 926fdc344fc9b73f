"""Vertical scaling end to end (issue #13, item 5): a real server and agent, real tasks in real
cgroups. A resize through the API is applied live — the new limits in the instance's cgroup
files, the same pid — and the node's allocated totals follow; a resize no node has room for
is refused, and one the agent refuses (below the working set) puts the allocation back; an
OOM kill in ``auto`` mode raises the memory limit at once and the instance then runs past its
old limit; ``elastin recommend`` shows recommendation, request and use."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from elastin.agent.drivers.base import proc_start_ticks
from elastin.client.errors import ApiError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
]

PY = sys.executable
MI = 1 << 20
CG = Path("/sys/fs/cgroup")
SLEEP = json.dumps([PY, "-c", "import time; time.sleep(600)"])
# touches 28 MiB, then says so in its HOME and sleeps: more than 32Mi with Python and the log
# timestamper around it
GROW = (
    "import os, time\n"
    "a = bytearray(28 << 20)\n"
    "for i in range(0, len(a), 4096): a[i] = 1\n"
    "open(os.path.join(os.environ['HOME'], 'grown'), 'w').close()\n"
    "time.sleep(600)\n"
)


def limits(root: str, alloc_id: str) -> tuple[int, int]:
    """The cpu quota (µs per 100 ms) and memory limit in the allocation's cgroup files."""
    if (CG / "cgroup.controllers").exists():  # v2
        d = CG / root / alloc_id
        return int((d / "cpu.max").read_text().split()[0]), int((d / "memory.max").read_text())
    quota = (CG / "cpu" / root / alloc_id / "cpu.cfs_quota_us").read_text()
    mem = (CG / "memory" / root / alloc_id / "memory.limit_in_bytes").read_text()
    return int(quota), int(mem)


def test_resize_in_place_through_the_api(harness: Any) -> None:
    h = harness.start()
    spec = h.write_spec(
        "v.yaml",
        f"""
app: v
services:
  hold:
    command: {SLEEP}
    resources: {{cpu: 100m, memory: 48Mi}}
    autoscale: {{vertical: {{mode: recommend}}}}
""",
    )
    h.cli("apply", str(spec), "--wait", check=True)
    a = h.wait_for(lambda: h.running("v", "hold"), 30, "hold running")[0]
    ticks = proc_start_ticks(a.pid)
    assert limits(h.cgroup_root, a.id) == (10_000, 48 * MI)
    node_before = h.client.resources()["nodes"][0]["allocated"]

    done = h.client.resize(a.id, "300m", "96Mi")
    assert done["action"] == "in_place", done
    h.wait_for(
        lambda: limits(h.cgroup_root, a.id) == (30_000, 96 * MI), 30, "the new limits applied"
    )
    now = h.client.allocations(app="v")
    assert [(x.id, x.pid, x.resources.cpu, x.resources.memory) for x in now] == [
        (a.id, a.pid, 300, 96 * MI)
    ]
    assert proc_start_ticks(a.pid) == ticks  # the same process, never restarted
    node_after = h.client.resources()["nodes"][0]["allocated"]
    assert node_after["cpu"] - node_before["cpu"] == 200
    assert node_after["memory"] - node_before["memory"] == 48 * MI
    events = [e["type"] for e in h.client.events(limit=0)]
    assert "alloc.resize" in events  # the server's
    h.wait_for(
        lambda: "alloc.resized" in [e["type"] for e in h.client.events(limit=0)],
        10,
        "the agent's alloc.resized event",
    )

    # more than any node has: refused, nothing changes
    with pytest.raises(ApiError) as refused:
        h.client.resize(a.id, "300m", "64Ti")
    assert refused.value.status == 409
    assert "fits neither on its node" in refused.value.message
    assert limits(h.cgroup_root, a.id) == (30_000, 96 * MI)

    # `elastin recommend`: the request now, the use, and a recommendation once sampled
    def recommended() -> dict[str, Any] | None:
        out = h.cli("recommend", "hold", "--json", check=True).stdout
        svc = json.loads(out)["services"][0]
        return svc if svc["recommendation"] and svc["instances"][0]["use"] else None

    svc = h.wait_for(recommended, 30, "a recommendation")
    assert svc["mode"] == "recommend"
    assert svc["instances"][0]["request"] == {"cpu": 300, "memory": 96 * MI}
    assert svc["recommendation"]["target"]["memory"] >= 4 * MI
    table = h.cli("recommend", check=True).stdout
    assert "v/hold" in table and "300m" in table and "96Mi" in table


def test_oom_kill_raises_the_limit_in_auto_mode(harness: Any) -> None:
    h = harness.start()
    spec = h.write_spec(
        "g.yaml",
        f"""
app: g
services:
  grow:
    command: ["{PY}", "-c", {json.dumps(GROW)}]
    resources: {{cpu: 200m, memory: 32Mi}}
    restart: {{policy: always, backoff: 1s, max_backoff: 2s}}
    autoscale: {{vertical: {{mode: auto, min: {{cpu: 200m}}}}}}
""",
    )
    h.cli("apply", str(spec), check=True)
    h.wait_for(
        lambda: "alloc.oom_killed" in [e["type"] for e in h.client.events(limit=0)],
        60,
        "an OOM kill at 32Mi",
    )

    def grown() -> Any:
        run = h.running("g", "grow")
        if not run or run[0].resources.memory <= 32 * MI:
            return None
        a = run[0]
        home = h.data_dir / "allocs" / a.id / "local" / "grown"
        return a if home.exists() else None

    a = h.wait_for(grown, 90, "the instance running past 32Mi with a raised limit")
    assert limits(h.cgroup_root, a.id)[1] == a.resources.memory > 32 * MI
    reasons = [e["message"] for e in h.client.events(limit=0) if e["type"] == "alloc.resize"]
    assert any("OOM-killed at 32Mi" in r for r in reasons), reasons


def test_a_resize_the_agent_refuses_puts_the_allocation_back(harness: Any) -> None:
    """Below the instance's working set (it touched 28 MiB; asked for 8Mi): the agent
    refuses, the instance keeps its limits, and the allocation's resources (what the node's
    totals count) go back to them."""
    h = harness.start()
    spec = h.write_spec(
        "r.yaml",
        f"""
app: r
services:
  hold:
    command: ["{PY}", "-c", {json.dumps(GROW)}]
    resources: {{cpu: 100m, memory: 48Mi}}
""",
    )
    h.cli("apply", str(spec), "--wait", check=True)
    a = h.wait_for(lambda: h.running("r", "hold"), 30, "hold running")[0]
    grown = h.data_dir / "allocs" / a.id / "local" / "grown"
    h.wait_for(grown.exists, 30, "the instance using 28 MiB")
    before = h.client.resources()["nodes"][0]["allocated"]
    done = h.client.resize(a.id, "200m", "8Mi")
    assert done["action"] == "in_place", done

    def put_back() -> bool:
        [x] = h.client.allocations(app="r")
        return (x.resources.cpu, x.resources.memory) == (100, 48 * MI)

    h.wait_for(put_back, 30, "the allocation's resources put back")
    assert limits(h.cgroup_root, a.id) == (10_000, 48 * MI)  # nothing written
    assert h.client.resources()["nodes"][0]["allocated"] == before
    events = [e for e in h.client.events(limit=0) if e["type"] == "alloc.resize_failed"]
    assert events and "keeps running with cpu 100m, memory 48Mi" in events[0]["message"]

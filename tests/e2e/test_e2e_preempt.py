"""Priority under pressure, end to end (a real server and agent, real tasks): on a full node a
higher-priority service scaled up preempts a lower-priority batch job; the job is requeued,
not lost, and runs again — to completion — once the service scales down and room returns; the
preempted run says why it stopped. docs/scheduler.md, "Priority and preemption"."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
]

PY = sys.executable

# the job waits for the test to release it (a file in its working directory, the spec's):
# its first run is preempted before that, so only a run after the preemption can complete
JOB = "import os, time\nwhile not os.path.exists('release'): time.sleep(0.2)\n"


def test_a_preempted_batch_job_is_requeued_and_completes_when_room_returns(harness: Any) -> None:
    h = harness.start()
    (node,) = h.client.nodes()
    cpu = node["capacity"]["cpu"]  # millicores; the node runs nothing else
    # the job takes half the node, each replica of the service 3/10: job + one replica fit,
    # job + two replicas do not
    batch = harness.write_spec(
        "batch.yaml",
        f"""
app: batch
jobs:
  crunch:
    command: ["{PY}", "-c", {json.dumps(JOB)}]
    priority: 20
    resources: {{cpu: {cpu // 2}m, memory: 32Mi}}
""",
    )
    front = harness.write_spec(
        "front.yaml",
        f"""
app: front
services:
  hot:
    command: ["{PY}", "-c", "import time; time.sleep(600)"]
    priority: 80
    replicas: 1
    resources: {{cpu: {cpu * 3 // 10}m, memory: 32Mi}}
""",
    )
    h.cli("apply", str(front), "--wait", check=True)
    h.cli("apply", str(batch), check=True)
    (first,) = h.wait_for(lambda: h.running("batch", "crunch"), 30, "the job running")

    h.cli("scale", "front/hot", "2", check=True)
    h.wait_for(lambda: len(h.running("front", "hot")) == 2, 30, "two replicas of hot")
    (stopped,) = h.wait_for(
        lambda: [a for a in h.allocs("batch") if a.id == first.id and a.status == "stopped"],
        30,
        "the job's run stopped",
    )
    # it says why, after its agent reported the stop (issue #13: "stopped" overwrote it)
    assert stopped.reason.startswith("preempted by front.hot"), stopped
    listed = h.cli("ps", "-a", check=True).stdout
    (line,) = [x for x in listed.splitlines() if first.id[:8] in x]
    assert "preempted by front.hot" in line, listed
    # requeued, not lost: a new run of the job waits for room, and says why
    waiting = h.wait_for(
        lambda: [a for a in h.allocs("batch") if a.id != first.id and a.status == "pending"],
        30,
        "the job requeued",
    )
    assert len(waiting) == 1 and "cpu" in waiting[0].reason, waiting
    events = json.loads(h.cli("events", "--json", check=True).stdout)
    about = [e for e in events if first.id.startswith(e["subject"].split()[-1])]
    preempted = [e["message"] for e in about if e["type"] == "alloc.preempted"]
    assert len(preempted) == 1 and "preempted by front.hot" in preempted[0], about

    # room returns: the job runs again, and completes once released
    h.cli("scale", "front/hot", "1", check=True)
    (again,) = h.wait_for(lambda: h.running("batch", "crunch"), 60, "the job running again")
    assert again.id == waiting[0].id
    (harness.tmp / "release").write_text("")
    done = h.wait_for(
        lambda: [a for a in h.allocs("batch") if a.status == "complete"], 60, "the job complete"
    )
    assert [a.id for a in done] == [again.id]
    settled = h.cli("ps", "--json", check=True).stdout
    (report,) = [s for s in json.loads(settled)["services"] if s["name"] == "crunch"]
    assert (report["complete"], report["failed"]) == (1, 0), report

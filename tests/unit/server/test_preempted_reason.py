"""A preempted run keeps its reason (issue #13): the scheduler stops it with "preempted by
..." and its agent's later report ("stopped", the exit code) does not overwrite that, so that
``elastin ps -a`` and ``status`` say why it stopped. An instance that ended by itself before
the stop reached it says its own outcome."""

from __future__ import annotations

import pytest

from elastin.model.cluster import Allocation, Node
from elastin.model.resources import Resources
from elastin.server.cluster import Cluster
from elastin.server.reports import AllocReport
from elastin.store.memory import MemoryStore
from elastin.testing import FakeClock

BATCH = """
app: batch
jobs:
  crunch:
    command: python3 crunch.py
    priority: 20
    resources: {cpu: 600m, memory: 32Mi}
"""
FRONT = """
app: front
services:
  hot:
    command: python3 -m http.server
    priority: 80
    resources: {cpu: 600m, memory: 32Mi}
"""


@pytest.fixture
async def cluster() -> Cluster:
    c = await Cluster.open(MemoryStore(), seed=1, clock=FakeClock())
    await c.nodes.register(Node(id="n1", name="n1", capacity=Resources(1000, 1 << 30, 10 << 30)))
    return c


async def preempted(cluster: Cluster) -> Allocation:
    """The batch job's run, running, then preempted by front/hot (one fits, not two)."""
    await cluster.apps.apply(BATCH)
    await cluster.applier.schedule_once()
    (run,) = (await cluster.views.all_allocations())[0]
    await cluster.reports.update(run.id, AllocReport(status="running", pid=42, reason=""))
    await cluster.apps.apply(FRONT)
    await cluster.applier.schedule_once()
    allocs, _ = await cluster.views.all_allocations()
    (victim,) = [a for a in allocs if a.id == run.id]
    assert victim.desired == "stop" and victim.status == "running"
    assert victim.reason.startswith("preempted by front.hot[0]"), victim.reason
    return victim


async def test_the_agents_stop_report_keeps_the_preemption_reason(cluster: Cluster) -> None:
    victim = await preempted(cluster)
    # the agent drains and stops it, and says so as it does for any stop
    done = await cluster.reports.update_many(
        {victim.id: AllocReport(status="stopped", reason="stopped", exit_code=143, pid=0)}
    )
    assert done == {victim.id: "ok"}
    allocs, _ = await cluster.views.all_allocations()
    (after,) = [a for a in allocs if a.id == victim.id]
    assert (after.status, after.exit_code) == ("stopped", 143)
    assert after.reason == victim.reason  # what `ps -a` shows: why it stopped
    # one report at a time (the agent's retry path) keeps it too
    again = await cluster.reports.update(victim.id, AllocReport(status="stopped", reason="x"))
    assert again.reason == victim.reason


async def test_a_run_that_failed_before_the_stop_reached_it_says_so(cluster: Cluster) -> None:
    victim = await preempted(cluster)
    got = await cluster.reports.update(
        victim.id, AllocReport(status="failed", reason="exit code 3", exit_code=3)
    )
    assert (got.status, got.reason) == ("failed", "exit code 3")


async def test_a_report_on_a_running_instance_still_sets_its_reason(cluster: Cluster) -> None:
    await cluster.apps.apply(BATCH)
    await cluster.applier.schedule_once()
    (run,) = (await cluster.views.all_allocations())[0]
    got = await cluster.reports.update(run.id, AllocReport(status="starting", reason="retry 1"))
    assert got.reason == "retry 1"

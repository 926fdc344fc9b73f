"""The autoscaler loop times its intervals and idleness on the monotonic clock (review of
issue #13, finding 3): an NTP step of the wall clock neither stops the evaluation (a step
back) nor makes an idle service idle for longer than it was (a step forward)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import test_autoscaler as busy
import test_scale_to_zero as zero
from server_support import replicas, start_placed

from elastin.mesh.model.names import ClusterName
from elastin.model.cluster import Node
from elastin.model.resources import Resources
from elastin.server.cluster import Cluster
from elastin.store.memory import MemoryStore
from elastin.testing import FakeClock


class SteppedClock(FakeClock):
    """A fake clock whose wall clock can be stepped (``offset``); monotonic time cannot."""

    offset = 0.0

    def time(self) -> float:
        return self.now + self.offset


async def test_a_wall_clock_stepped_back_does_not_stop_the_evaluation() -> None:
    clock = SteppedClock(1_700_000_000.0)
    cluster = await Cluster.open(MemoryStore(), seed=1, clock=clock)
    await cluster.nodes.register(Node(id="n1", name="n1", capacity=Resources(4000, 8 << 30)))
    await cluster.apps.apply(busy.SPEC)
    await start_placed(cluster)
    clock.now += 6
    await cluster.applier.follow_rollouts()
    _, ids = await busy.api(cluster)
    await cluster.autoscaler.evaluate_once()  # the first evaluation; the next one in 1 s
    clock.now += 2
    clock.offset = -3600.0  # NTP steps the wall clock back an hour
    await busy.load(cluster, ids, 3, [0])
    await cluster.autoscaler.evaluate_once()
    count, _ = await busy.api(cluster)
    assert count == 3
    status = cluster.autoscaler.status("shop", "api")
    assert status is not None and status["at"] == clock.time()  # shown: wall time


async def test_a_wall_clock_stepped_forward_does_not_make_a_service_idle() -> None:
    clock = SteppedClock(1_700_000_000.0)
    cluster = await Cluster.open(MemoryStore(), seed=1, clock=clock)
    await cluster.nodes.register(Node(id="n1", name="n1", capacity=Resources(4000, 8 << 30)))
    await cluster.apps.apply(zero.SPEC)
    ids = await start_placed(cluster)
    clock.now += 6
    await cluster.applier.follow_rollouts()
    zero.report(cluster, ids, 5)
    await cluster.autoscaler.evaluate_once()  # active now
    clock.now += 1
    zero.report(cluster, ids, 5)  # quiet for one second (idle_after is 2 s)
    clock.offset = 3600.0  # NTP steps the wall clock forward an hour
    await cluster.autoscaler.evaluate_once()
    assert await replicas(cluster) == 1


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_the_next_pass_follows_a_fresh_metrics_report() -> None:
    """The loop's tick and the agents' reports are not in step: a pass waits for the report
    that comes near the end of its interval rather than reading numbers up to a second old
    (issue #13, reaction time). Without a report it comes after the interval, as before."""
    clock = FakeClock(1000.0)
    cluster = await Cluster.open(MemoryStore(), seed=1, clock=clock)
    scaler = cluster.autoscaler
    pause = asyncio.ensure_future(scaler._pause(1.0))
    await _settle()
    clock.advance(0.5)
    cluster.telemetry.record_metrics("n1", busy.report(1000.5, {}))  # too early to count
    await _settle()
    assert not pause.done()
    clock.advance(0.25)  # past 0.7 s: the report that came counts now
    await _settle()
    assert pause.done()

    scaler._fresh.clear()
    pause = asyncio.ensure_future(scaler._pause(1.0))  # no report this time
    await _settle()
    clock.advance(0.85)
    await _settle()
    assert not pause.done()
    clock.advance(0.2)
    await _settle()
    assert pause.done()


async def stable_api(spec: str = busy.SPEC) -> tuple[Cluster, FakeClock, list[str]]:
    """A cluster on a fake clock running ``spec``'s autoscaled ``api`` (one replica, its
    version proven: the autoscaler holds the count during a rollout), and its replicas."""
    clock = FakeClock(1_700_000_000.0)
    cluster = await Cluster.open(MemoryStore(), seed=1, clock=clock)
    await cluster.nodes.register(Node(id="n1", name="n1", capacity=Resources(4000, 8 << 30)))
    await cluster.apps.apply(spec)
    await start_placed(cluster)
    clock.now += 6
    await cluster.applier.follow_rollouts()
    _, ids = await busy.api(cluster)
    return cluster, clock, ids


async def test_an_early_report_is_evaluated_at_once_due_or_not() -> None:
    """An agent reports early when the load jumped (``agent.sampling.burst``): the loop
    wakes at once and evaluates the services whose load jumped, though their interval is
    not over; a service whose load did not jump waits for its turn."""
    cluster, clock, ids = await stable_api()
    scaler = cluster.autoscaler
    await scaler.evaluate_once()  # quiet: the next evaluation is due in 0.7 s at the soonest
    clock.now += 0.2
    scaler._kick.clear()
    await busy.load(cluster, ids, 3, [0])  # a regular report: waits for its turn
    assert not scaler._kick.is_set()
    await scaler.evaluate_once()
    count, _ = await busy.api(cluster)
    assert count == 1  # not due yet
    eps = {a: {"requests": 20, "active": 3} for a in ids}
    early = busy.report(clock.time(), eps, 20)
    other = (ClusterName("shop", "other", "http"),)  # another service's load jumped
    cluster.telemetry.record_metrics("n1", replace(early, early=True, jumped=other))
    await scaler.evaluate_once()
    count, _ = await busy.api(cluster)
    assert count == 1  # api's turn has not come
    jumped = (ClusterName("shop", "api", "http"),)
    cluster.telemetry.record_metrics("n1", replace(early, early=True, jumped=jumped))
    assert scaler._kick.is_set()  # the loop's pause ends now
    await scaler.evaluate_once()
    count, _ = await busy.api(cluster)
    assert count == 3  # evaluated though not due: 3 in flight against a target of 1


async def test_an_early_report_keeps_a_long_interval() -> None:
    """HPA's 15 s interval is what such a policy asked for: an early report does not
    evaluate it before its time (it made the benchmark's HPA row react like Elastin's)."""
    spec = busy.SPEC.replace("      min: 1\n", "      min: 1\n      interval: 15s\n")
    cluster, clock, ids = await stable_api(spec)
    scaler = cluster.autoscaler
    await scaler.evaluate_once()
    clock.now += 1
    eps = {a: {"requests": 20, "active": 3} for a in ids}
    early = busy.report(clock.time(), eps, 20)
    cluster.telemetry.record_metrics(
        "n1", replace(early, early=True, jumped=(ClusterName("shop", "api", "http"),))
    )
    await scaler.evaluate_once()
    count, _ = await busy.api(cluster)
    assert count == 1  # 14 s before its next evaluation


async def test_an_early_report_of_an_older_agent_names_no_port_and_wakes_every_service() -> None:
    """An agent from before ``jumped`` (a rolling upgrade) sends ``early`` alone: every
    service with a short interval is evaluated, as then."""
    cluster, clock, ids = await stable_api()
    scaler = cluster.autoscaler
    await scaler.evaluate_once()
    clock.now += 0.2
    eps = {a: {"requests": 20, "active": 3} for a in ids}
    cluster.telemetry.record_metrics("n1", replace(busy.report(clock.time(), eps, 20), early=True))
    await scaler.evaluate_once()
    count, _ = await busy.api(cluster)
    assert count == 3

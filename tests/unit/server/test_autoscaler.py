"""The server's autoscaler loop on an in-memory store and a fake clock (issue #13, items 1
and 7): observations from the one-second windows, a scale through the same record change as
``elastin scale`` with an event that explains it (reason and structured values), the
rate-limited event when a limit holds a change back, the hold during a rollout, and the
per-service interval."""

from __future__ import annotations

from typing import Any

import pytest
from server_support import events_of, replicas, start_placed

from elastin.model.cluster import Allocation, Node
from elastin.model.resources import Resources
from elastin.server.autoscaler import HeldEvents, observations, service_p99
from elastin.server.cluster import Cluster
from elastin.server.windows import Windows, parse_report
from elastin.store.memory import MemoryStore
from elastin.testing import FakeClock

SPEC = """
app: shop
services:
  api:
    command: python3 -m http.server
    ports: {http: 0}
    resources: {cpu: 200m, memory: 64Mi}
    autoscale:
      min: 1
      max: 3
      metrics: [{inflight: 1}]
      behavior: {scale_down: {stabilization_window: 2s}}
"""


def report(
    at: float,
    endpoints: dict[str, dict[str, Any]],
    requests: int = 0,
    active: int | None = None,
    queued: int = 0,
) -> Any:
    return parse_report(
        {
            "at": at,
            "interval": 1.0,
            "instances": {
                a: {
                    "app": "shop",
                    "workload": "api",
                    "cpu": 50.0,
                    "memory": 1 << 20,
                    "cpu_request": 200,
                    "memory_request": 64 << 20,
                    "ready": True,
                }
                for a in endpoints
            },
            "ports": {
                "shop.api.http": {
                    "mode": "http",
                    "requests": requests,
                    "active": (
                        sum(e.get("active", 0) for e in endpoints.values())
                        if active is None
                        else active
                    ),
                    "queued": queued,
                    "max_ms": 300.0,
                    "avg_ms": 20.0,
                    "endpoints": endpoints,
                }
            },
        }
    )


def alloc(aid: str, status: str = "running", ready_at: float = 5.0, **kw: Any) -> Allocation:
    return Allocation(
        id=aid, app="shop", workload="api", index=0, status=status, ready_at=ready_at, **kw
    )  # type: ignore[arg-type]


def test_observations_from_the_windows() -> None:
    clock = FakeClock(1000.0)
    w = Windows(clock)
    w.record("n1", report(999.0, {"a": {"requests": 10, "active": 2}}, requests=10))
    w.record("n1", report(1000.0, {"a": {"requests": 30, "active": 3}}, requests=30))
    metrics = w.service("shop", "api", 1)
    from elastin.model.spec import parse_spec

    wl = parse_spec(SPEC).workloads[0]
    allocs = [
        alloc("a"),
        alloc("b", status="pending", ready_at=0.0),  # placed, not started: not ready
        alloc("c", desired="stop"),  # on its way out: not a replica
        alloc("d", status="stopped"),  # gone
    ]
    obs = observations(wl, allocs, metrics)
    assert [r.id for r in obs.replicas] == ["a", "b"]
    a, b = obs.replicas
    assert a.ready and a.started_at == 5.0
    assert a.cpu == 50.0 and a.memory == 1 << 20  # millicores and bytes, as the request
    assert a.rps == 20.0 and a.inflight == 3.0
    assert not b.ready and b.cpu is None and b.rps is None and b.inflight is None
    assert obs.request == Resources(200, 64 << 20, obs.request.disk)
    assert obs.p99 == 0.3  # the longest response of the second: an upper bound
    # nothing measured yet: no values, and no p99
    empty = observations(wl, [alloc("a")], Windows(clock).service("shop", "api", 1))
    assert empty.replicas[0].inflight is None and empty.p99 is None


def test_held_events_are_rate_limited() -> None:
    h = HeldEvents(every=10, repeat=300)
    assert h.due("s", ("max", 3), 0)
    assert not h.due("s", ("max", 3), 5)
    assert not h.due("s", ("min", 1), 5)  # another reason, too soon
    assert h.due("s", ("min", 1), 10)
    assert not h.due("s", ("min", 1), 200)  # the same again: after 300 s
    assert h.due("s", ("min", 1), 310)
    assert h.due("other", ("max", 3), 5)  # per service


@pytest.fixture
async def cluster() -> Cluster:
    return await Cluster.open(MemoryStore(), seed=1, clock=FakeClock(1000.0))


async def api(cluster: Cluster) -> tuple[int, list[str]]:
    count = await replicas(cluster)
    allocs_, _ = await cluster.views.all_allocations()
    live = [a.id for a in allocs_ if a.workload == "api" and not a.terminal and a.desired == "run"]
    return count, live


async def load(cluster: Cluster, ids: list[str], active: int, requests: list[int]) -> None:
    """A metrics report in which each replica has ``active`` requests in flight."""
    clock = cluster.clock
    requests[0] += 10
    eps = {a: {"requests": requests[0], "active": active} for a in ids}
    cluster.telemetry.record_metrics("n1", report(clock.time(), eps, requests[0]))


async def test_scales_up_on_load_and_down_after_the_window(cluster: Cluster) -> None:
    clock = cluster.clock
    assert isinstance(clock, FakeClock)
    await cluster.nodes.register(Node(id="n1", name="n1", capacity=Resources(4000, 8 << 30)))
    await cluster.apps.apply(SPEC)
    await start_placed(cluster)
    clock.now += 6  # min_healthy_time: the first version becomes stable
    await cluster.applier.follow_rollouts()
    count, ids = await api(cluster)
    assert count == 1 and len(ids) == 1
    sent = [0]

    # 3 requests in flight on the one replica: ceil(1 × 3 / 1) = 3
    await load(cluster, ids, 3, sent)
    await cluster.autoscaler.evaluate_once()
    count, _ = await api(cluster)
    assert count == 3
    (ev,) = await events_of(cluster, "service.autoscaled")
    assert ev.subject == "shop/api" and ev.message.startswith("scale up 1 → 3")
    assert "inflight 3 (target 1) → 3" in ev.message and "bounds 1..3" in ev.message
    assert ev.data["current"] == 1 and ev.data["desired"] == 3 and ev.data["limit"] == ""
    (m,) = ev.data["metrics"]
    assert m == {
        "metric": "inflight",
        "kind": "inflight",
        "target": 1.0,
        "value": 3.0,
        "proposal": 3,
        "note": "",
    }
    status = cluster.autoscaler.status("shop", "api")
    assert status is not None and status["desired"] == 3 and status["min"] == 1

    # the new replicas start; before the interval passes nothing is evaluated again
    await start_placed(cluster)
    _, ids = await api(cluster)
    assert len(ids) == 3
    await cluster.autoscaler.evaluate_once()
    assert len(await events_of(cluster, "service.autoscaled")) == 1

    # the load stops: the scale-down window (2 s) keeps 3 and says so, once
    for step in (0.5, 0.5, 0.5):
        clock.now += step
        await load(cluster, ids, 0, sent)
        await cluster.autoscaler.evaluate_once()
    assert (await api(cluster))[0] == 3
    held = await events_of(cluster, "service.autoscale_held")
    assert len(held) == 1, held
    assert held[0].data["limit"] == "scale-down-stabilization"
    assert "stabilized" in held[0].message and held[0].data["recommended"] == 0
    clock.now += 0.5  # 2 s after the recommendation of 3
    await load(cluster, ids, 0, sent)
    await cluster.autoscaler.evaluate_once()
    assert (await api(cluster))[0] == 1
    down = (await events_of(cluster, "service.autoscaled"))[-1]
    assert down.message.startswith("scale down 3 → 1") and down.data["desired"] == 1


async def test_a_rollout_holds_the_count(cluster: Cluster) -> None:
    await cluster.nodes.register(Node(id="n1", name="n1", capacity=Resources(4000, 8 << 30)))
    await cluster.apps.apply(SPEC)
    await start_placed(cluster)  # version 1 is still rolling (not healthy for min_healthy_time yet)
    _, ids = await api(cluster)
    await load(cluster, ids, 3, [0])
    await cluster.autoscaler.evaluate_once()
    assert (await api(cluster))[0] == 1
    (held,) = await events_of(cluster, "service.autoscale_held")
    assert "rolls out" in held.message and held.data["limit"] == "rollout"
    assert held.data["asked"] == 3
    status = cluster.autoscaler.status("shop", "api")
    assert status is not None and status["limit"] == "rollout"


async def test_user_scale_meanwhile_is_not_overwritten(cluster: Cluster) -> None:
    """The autoscaler's change is conditional on the count it decided from."""
    await cluster.apps.apply(SPEC)
    assert await cluster.apps.autoscale("shop/api", 2, 3, "scale up", {}) is None
    rec = await cluster.views.application("shop")
    assert rec.app.workloads[0].replicas == 1
    assert await events_of(cluster, "service.autoscaled") == []


def test_requests_waiting_in_the_proxy_count_for_the_ready_replicas() -> None:
    """A backlog in the proxy's queue (``max_connections``) is on no endpoint yet: what
    arrived beyond the endpoints' shares, and what waits, is spread over the ready replicas,
    so that the decision sizes for the load asked, not for what the replicas could take."""
    clock = FakeClock(1000.0)
    w = Windows(clock)
    eps0 = {"a": {"requests": 10, "active": 1}, "e": {"requests": 0, "active": 0}}
    w.record("n1", report(999.0, eps0, requests=10))
    eps1 = {"a": {"requests": 30, "active": 3}, "e": {"requests": 0, "active": 0}}
    # 50 arrived, 20 of them went to an endpoint; 9 in the backend, 6 of them queued
    w.record("n1", report(1000.0, eps1, requests=60, active=9, queued=6))
    from elastin.model.spec import parse_spec

    wl = parse_spec(SPEC).workloads[0]
    obs = observations(wl, [alloc("a"), alloc("e")], w.service("shop", "api", 1))
    a, e = obs.replicas
    assert (a.rps, e.rps) == (35.0, 15.0)  # 20 + 30/2, 0 + 30/2
    assert (a.inflight, e.inflight) == (6.0, 3.0)  # 3 + 6/2, 0 + 6/2


# --- application gauges (issue #13) --------------------------------------------------------

GAUGE_SPEC = """
app: shop
services:
  api:
    command: python3 -m http.server
    ports: {http: 0, metrics: 0}
    resources: {cpu: 200m, memory: 64Mi}
    autoscale:
      min: 1
      max: 4
      metrics: [{metric: queue_depth, target: 10, port: metrics}]
"""


def gauge_report(at: float, gauges: dict[str, dict[str, float]]) -> Any:
    """A metrics report with each replica's application gauges (allocation -> name -> value)."""
    instances = {
        a: {
            "app": "shop",
            "workload": "api",
            "cpu": 50.0,
            "memory": 1 << 20,
            "cpu_request": 200,
            "memory_request": 64 << 20,
            "ready": True,
            "gauges": g,
        }
        for a, g in gauges.items()
    }
    return parse_report({"at": at, "interval": 1.0, "instances": instances})


def test_observations_carry_the_replicas_application_gauges() -> None:
    from elastin.model.spec import parse_spec

    clock = FakeClock(1000.0)
    w = Windows(clock)
    w.record("n1", gauge_report(1000.0, {"a": {"queue_depth": 25.0, "other": 1.0}, "b": {}}))
    wl = parse_spec(GAUGE_SPEC).workloads[0]
    obs = observations(wl, [alloc("a"), alloc("b"), alloc("c")], w.service("shop", "api", 1))
    a, b, c = obs.replicas
    assert a.gauges == (("other", 1.0), ("queue_depth", 25.0))
    assert b.gauges == () and c.gauges == ()  # none read, none reported: missing
    (metric,) = wl.autoscale.metrics if wl.autoscale else ()
    assert a.value(metric, obs.request) == 25.0 and b.value(metric, obs.request) is None


async def test_a_gauge_above_its_target_scales_up_and_the_event_names_it(
    cluster: Cluster,
) -> None:
    clock = cluster.clock
    assert isinstance(clock, FakeClock)
    await cluster.nodes.register(Node(id="n1", name="n1", capacity=Resources(4000, 8 << 30)))
    await cluster.apps.apply(GAUGE_SPEC)
    await start_placed(cluster)
    clock.now += 6  # min_healthy_time: the first version becomes stable
    await cluster.applier.follow_rollouts()
    _, ids = await api(cluster)
    cluster.telemetry.record_metrics(
        "n1", gauge_report(clock.time(), {ids[0]: {"queue_depth": 30}})
    )
    await cluster.autoscaler.evaluate_once()
    assert (await api(cluster))[0] == 3  # ceil(1 × 30 / 10)
    (ev,) = await events_of(cluster, "service.autoscaled")
    assert "queue_depth 30 (target 10) → 3" in ev.message, ev.message
    (m,) = ev.data["metrics"]
    assert (m["metric"], m["kind"], m["value"], m["target"]) == ("queue_depth", "app", 30.0, 10)
    view = cluster.autoscaler.status("shop", "api")
    assert view is not None and view["metrics"][0]["value"] == 30.0


def test_the_p99_is_the_measured_one_and_the_longest_response_only_without_a_histogram() -> None:
    def total(p99: float | None, longest: float | None) -> dict[str, Any]:
        return {
            "total": {
                "p99_response_ms": {"current": p99, "series": [p99]},
                "max_response_ms": {"current": longest, "series": [longest]},
            }
        }

    assert service_p99(total(120.0, 900.0)) == (0.12, True)
    assert service_p99(total(None, 900.0)) == (0.9, False)  # an agent without a histogram
    assert service_p99(total(None, None)) == (None, False)
    assert service_p99({}) == (None, False)


def test_requests_the_mesh_answered_itself_are_not_load_for_the_replicas() -> None:
    """A rate-limited service: what arrived beyond the replicas' share was answered by the
    mesh (429), not queued; spreading it would scale up replicas the limit keeps idle (a
    reviewer's finding)."""
    clock = FakeClock(1000.0)
    w = Windows(clock)
    w.record("n1", report(999.0, {"a": {"requests": 10, "active": 1}}, requests=10))
    # 1,000 arrived, 100 went to the endpoint, the rest were 429s; nothing waits
    w.record("n1", report(1000.0, {"a": {"requests": 110, "active": 1}}, requests=1010))
    from elastin.model.spec import parse_spec

    wl = parse_spec(SPEC).workloads[0]
    (a,) = observations(wl, [alloc("a")], w.service("shop", "api", 1)).replicas
    assert a.rps == 100.0 and a.inflight == 1.0

"""The server's rolling metric windows on a fake clock (pure): rates from cumulative
counters, counter resets, two reports in one second, holes, ageing, aggregation over nodes
and replicas, and the report's checks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from elastin.server.windows import (
    ClockSkew,
    NodeReport,
    Windows,
    histogram_quantile,
    merge_histograms,
    parse_report,
)
from elastin.testing import FakeClock

T0 = 1_000_000.0


def report(
    at: float,
    requests: int = 0,
    *,
    errors: int = 0,
    active: int = 0,
    queued: int = 0,
    avg_ms: float = 0,
    max_ms: float = 0,
    endpoints: dict[str, dict[str, Any]] | None = None,
    instances: dict[str, dict[str, Any]] | None = None,
    interval: float = 1.0,
) -> NodeReport:
    port: dict[str, Any] = {
        "mode": "http",
        "requests": requests,
        "errors": errors,
        "active": active,
        "queued": queued,
        "avg_ms": avg_ms,
        "max_ms": max_ms,
        "endpoints": endpoints or {},
    }
    return parse_report(
        {
            "at": at,
            "interval": interval,
            "instances": instances or {},
            "ports": {"shop.api.http": port},
        }
    )


def inst(cpu: float, memory: int = 0, ready: bool = True, workload: str = "api") -> dict[str, Any]:
    return {
        "app": "shop",
        "workload": workload,
        "cpu": cpu,
        "memory": memory,
        "cpu_request": 500,
        "memory_request": 1000,
        "ready": ready,
    }


def current(w: Windows, metric: str, port: str | None = None) -> Any:
    data = w.service("shop", "api", 10)
    where = data["total"] if port is None else data["ports"][port]
    return where[metric]["current"]


def test_rate_is_the_counter_difference_over_the_agents_interval() -> None:
    clock = FakeClock(T0)
    w = Windows(clock)
    w.record("n1", report(T0, 1000))
    assert current(w, "requests_per_s") is None  # no rate before a second reading
    clock.advance(1)
    # a backend's sessions (HAProxy's ``scur``) count its queued requests already
    w.record("n1", report(T0 + 2.0, 1200, errors=4, active=5, queued=2, avg_ms=7, max_ms=40))
    assert current(w, "requests_per_s") == 100.0  # 200 requests over the agent's 2 s
    assert current(w, "errors_per_s") == 2.0
    assert current(w, "in_flight") == 5.0  # the backend's sessions, queued ones included
    assert current(w, "avg_response_ms") == 7.0
    assert current(w, "max_response_ms") == 40.0
    assert current(w, "p99_response_ms") is None


def test_a_counter_that_went_down_was_reset() -> None:
    clock = FakeClock(T0)
    w = Windows(clock)
    w.record("n1", report(T0, 5000))
    clock.advance(1)
    w.record("n1", report(T0 + 1, 30))  # a proxy restarted without its base
    assert current(w, "requests_per_s") == 30.0  # counted since the reset, never negative


def test_times_are_left_out_for_an_interval_without_requests() -> None:
    clock = FakeClock(T0)
    w = Windows(clock)
    w.record("n1", report(T0, 10, avg_ms=9, max_ms=9))
    clock.advance(1)
    w.record("n1", report(T0 + 1, 10, avg_ms=9, max_ms=0))
    assert current(w, "requests_per_s") == 0.0
    assert current(w, "avg_response_ms") is None  # rtime is about older requests
    assert current(w, "max_response_ms") is None


def test_two_reports_in_one_second_merge_and_a_late_one_is_ignored() -> None:
    clock = FakeClock(T0)
    w = Windows(clock)
    w.record("n1", report(T0, 0))
    clock.advance(0.9)
    w.record("n1", report(T0 + 0.5, 50, max_ms=30))
    clock.advance(0.05)  # the same server second
    w.record("n1", report(T0 + 1.5, 250, max_ms=10, active=1))
    assert current(w, "requests_per_s") == 250 / 1.5  # over the summed time, nothing lost
    assert current(w, "max_response_ms") == 30.0
    assert current(w, "in_flight") == 1.0  # the newer gauge
    w.record("n1", report(T0 + 1.0, 9999))  # older than the last: a new series, no rate
    assert current(w, "requests_per_s") == 250 / 1.5


def test_a_point_holds_over_a_late_report_then_the_node_ages_out() -> None:
    clock = FakeClock(T0)
    w = Windows(clock, seconds=30)
    w.record("n1", report(T0, 0))
    clock.advance(1)
    w.record("n1", report(T0 + 1, 100))
    clock.advance(1)  # no report this second: the last one stands for it
    assert current(w, "requests_per_s") == 100.0
    clock.advance(2)  # silent past its hold: in no current value any more
    assert current(w, "requests_per_s") is None
    series = w.service("shop", "api", 5)["total"]["requests_per_s"]["series"]
    assert series == [None, 100.0, 100.0, None, None]  # a hold of 2 s
    assert w.nodes() == ["n1"]
    clock.advance(30)  # silent past the window: gone
    assert w.nodes() == []


def test_a_node_reporting_less_often_holds_longer() -> None:
    clock = FakeClock(T0)
    w = Windows(clock)
    w.record("n1", report(T0, 0, interval=5))
    clock.advance(5)
    w.record("n1", report(T0 + 5, 500, interval=5))
    clock.advance(4)
    assert current(w, "requests_per_s") == 100.0


def test_forget_drops_a_node_at_once() -> None:
    clock = FakeClock(T0)
    w = Windows(clock)
    w.record("n1", report(T0, 0, instances={"a1": inst(100)}))
    w.forget("n1")
    assert w.nodes() == [] and current(w, "replicas") == 0


def test_aggregation_over_nodes_and_replicas() -> None:
    clock = FakeClock(T0)
    w = Windows(clock)
    ep0 = {"a1": {"requests": 0}, "a2": {"requests": 0}}
    w.record("n1", report(T0, 0, endpoints=ep0, instances={"a1": inst(100, 200)}))
    w.record(
        "n2",
        report(T0, 0, endpoints={"a1": {"requests": 0}}, instances={"a2": inst(300, 600, False)}),
    )
    clock.advance(1)
    ep1 = {
        "a1": {"requests": 60, "active": 1, "avg_ms": 10, "max_ms": 20},
        "a2": {"requests": 20, "active": 2, "avg_ms": 30, "max_ms": 90},
    }
    w.record(
        "n1",
        report(
            T0 + 1,
            80,
            active=3,
            avg_ms=15,
            max_ms=90,
            endpoints=ep1,
            instances={"a1": inst(100, 200)},
        ),
    )
    w.record(
        "n2",
        report(
            T0 + 1,
            20,
            active=1,
            avg_ms=40,
            max_ms=50,
            endpoints={"a1": {"requests": 20, "active": 1, "avg_ms": 40, "max_ms": 50}},
            instances={"a2": inst(300, 600, False)},
        ),
    )
    data = w.service("shop", "api", 3)
    total = {k: v["current"] for k, v in data["total"].items()}
    assert total["requests_per_s"] == 100.0  # summed over both proxies
    assert total["in_flight"] == 4.0
    assert total["avg_response_ms"] == (15 * 80 + 40 * 20) / 100  # weighted by requests
    assert total["max_response_ms"] == 90.0
    assert total["cpu"] == 400.0 and total["memory"] == 800.0
    assert total["cpu_utilization"] == 400 / 1000 and total["memory_utilization"] == 0.4
    assert total["replicas"] == 2 and total["ready"] == 1
    a1 = data["replicas"]["a1"]
    assert a1["node"] == "n1" and a1["ready"]["current"] is True
    assert a1["requests_per_s"]["current"] == 80.0  # 60 from n1's proxy, 20 from n2's
    assert a1["in_flight"]["current"] == 2.0
    assert a1["avg_response_ms"]["current"] == (10 * 60 + 40 * 20) / 80
    assert a1["cpu_utilization"]["current"] == 100 / 500
    a2 = data["replicas"]["a2"]
    assert a2["node"] == "n2" and a2["ready"]["current"] is False
    assert a2["requests_per_s"]["current"] == 20.0
    port = data["ports"]["http"]
    assert port["requests_per_s"]["current"] == 100.0
    assert port["replicas"]["a1"]["requests_per_s"]["current"] == 80.0
    assert data["times"][-1] == int(T0 + 1) and len(data["total"]["cpu"]["series"]) == 3
    other = w.service("shop", "web", 3)  # another service: nothing of these
    assert other["total"]["replicas"]["current"] == 0 and other["replicas"] == {}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([], "the report must be an object"),
        ({"at": -1}, "the report.at must be a number >= 0"),
        ({"at": 1, "interval": 0}, "interval must be in (0, 3600]"),
        ({"at": 1, "ports": {"nodots": {"requests": 1}}}, "not a service port"),
        ({"at": 1, "ports": {"a.b.c": {"requests": "x"}}}, "ports['a.b.c'].requests"),
        ({"at": 1, "ports": {"a.b.c": {"requests": 1, "mode": "udp"}}}, "mode must be"),
        ({"at": 1, "instances": {"x": {"app": "a", "workload": "w"}}}, "instances['x'].cpu"),
        (
            {
                "at": 1,
                "instances": {
                    "x": {"app": "a", "workload": "w", "cpu": 1, "memory": 1, "ready": "yes"}
                },
            },
            "ready must be true or false",
        ),
        ({"at": 1, "instances": {str(k): {} for k in range(20_001)}}, "at most 20000"),
    ],
)
def test_a_malformed_report_is_refused_naming_the_field(body: Any, says: str) -> None:
    with pytest.raises(ValueError, match=None) as e:
        parse_report(body)
    assert says in str(e.value)


def test_the_windows_keep_numbers_not_a_copy_of_every_report() -> None:
    """Five minutes of one node's 2,000 instances: about 2 x 8 bytes per instance-second
    (cpu, memory) in one service's ring, not a reading object per instance and second."""
    import tracemalloc

    clock = FakeClock(T0)
    w = Windows(clock, seconds=60)
    instances = {f"alloc-{i:05d}-0123456789ab": inst(10.0 + i, 1 << 20) for i in range(2000)}
    tracemalloc.start()
    try:
        for s in range(60):
            # a fresh decode each second, as the route does: new strings and objects
            body = {"at": T0 + s, "interval": 1, "instances": dict(instances), "ports": {}}
            w.record("n1", parse_report(json.loads(json.dumps(body))))
            clock.advance(1)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 6_000_000, held  # the old windows held ~25 MB: a NodePoint a second
    data = w.service("shop", "api", 60)
    assert data["total"]["replicas"]["series"][-2] == 2000
    assert data["replicas"]["alloc-00007-0123456789ab"]["cpu"]["series"][-2] == 17.0


def test_backwards_at_starts_a_new_series_and_a_far_one_is_refused() -> None:
    clock = FakeClock(T0)
    w = Windows(clock)
    w.record("n1", report(T0, 0))
    clock.advance(1)
    w.record("n1", report(T0 + 1, 100))
    assert current(w, "requests_per_s") == 100.0
    with pytest.raises(ClockSkew, match="from the server's"):
        w.record("n1", report(T0 + 1e9, 150))  # the node's clock is far off: refused
    clock.advance(1)
    w.record("n1", report(T0 - 50, 200))  # its wall clock stepped back: a new series
    assert current(w, "requests_per_s") is None  # its counters are a new baseline
    clock.advance(1)
    w.record("n1", report(T0 - 49, 450))
    assert current(w, "requests_per_s") == 250.0  # counted from the new baseline


def mono_report(at: float, mono: float, requests: int, series: str = "s1") -> NodeReport:
    return parse_report(
        {
            "at": at,
            "mono": mono,
            "series": series,
            "interval": 1.0,
            "ports": {"shop.api.http": {"requests": requests}},
        }
    )


def test_rates_run_on_the_agents_monotonic_clock() -> None:
    clock = FakeClock(T0)
    w = Windows(clock)
    w.record("n1", mono_report(T0, 5000.0, 0))
    clock.advance(1)
    w.record("n1", mono_report(T0 - 30, 5001.0, 100))  # an NTP step back: still counted
    assert current(w, "requests_per_s") == 100.0
    clock.advance(1)
    w.record("n1", mono_report(T0 + 40, 5002.0, 200))  # a step forward: not spread thin
    assert current(w, "requests_per_s") == 100.0
    clock.advance(1)
    w.record("n1", mono_report(T0 + 3, 7.0, 50, series="s2"))  # the agent restarted
    assert current(w, "requests_per_s") is None  # a new baseline: no rate from it
    clock.advance(1)
    w.record("n1", mono_report(T0 + 4, 9.0, 450, series="s2"))
    assert current(w, "requests_per_s") == 200.0  # 400 requests over its 2 s


# --- application gauges (issue #13) --------------------------------------------------------


def with_gauges(gauges: dict[str, Any], cpu: float = 100) -> dict[str, Any]:
    return {**inst(cpu), "gauges": gauges}


def test_gauges_are_kept_per_replica_as_cpu_and_memory_are() -> None:
    clock = FakeClock(T0)
    w = Windows(clock)
    w.record("n1", report(T0, instances={"a1": with_gauges({"queue_depth": 4, "lag": 0.5})}))
    w.record("n2", report(T0, instances={"a2": inst(100)}))  # no gauge read from this one
    clock.advance(1)
    w.record("n1", report(T0 + 1, instances={"a1": with_gauges({"queue_depth": 9})}))
    w.record("n2", report(T0 + 1, instances={"a2": with_gauges({"queue_depth": 2})}))
    clock.advance(1)  # the second before is folded into the service's ring
    w.record("n1", report(T0 + 2, instances={"a1": with_gauges({"queue_depth": 12})}))
    data = w.service("shop", "api", 3)
    a1 = data["replicas"]["a1"]["gauges"]
    assert a1["queue_depth"] == {"current": 12.0, "series": [4.0, 9.0, 12.0]}
    assert a1["lag"] == {"current": None, "series": [0.5, None, None]}  # not read since
    a2 = data["replicas"]["a2"]
    # n2 sent nothing this second: its last point holds, gauges with it
    assert a2["gauges"]["queue_depth"]["series"] == [None, 2.0, 2.0]
    assert a2["cpu"]["current"] == 100.0
    # two reports in one second: the newer one's gauges
    w.record("n1", report(T0 + 2.5, instances={"a1": with_gauges({"queue_depth": 1})}))
    assert w.service("shop", "api", 1)["replicas"]["a1"]["gauges"]["queue_depth"]["current"] == 1
    # a replica that never had a gauge shows none (the shape is what it was)
    w2 = Windows(clock)
    w2.record("n1", report(T0 + 2, instances={"a1": inst(100)}))
    assert "gauges" not in w2.service("shop", "api", 1)["replicas"]["a1"]


@pytest.mark.parametrize(
    ("gauges", "says"),
    [
        ([1], "instances['x'].gauges must be an object, not list"),
        ({"9lives": 1}, "'9lives' is not a Prometheus metric name"),
        ({"a.b": 1}, "'a.b' is not a Prometheus metric name"),
        ({"q": "1"}, "gauges['q'] must be a finite number, not '1'"),
        ({"q": True}, "gauges['q'] must be a finite number"),
        ({"q": float("nan")}, "gauges['q'] must be a finite number, not nan"),
        ({"q": float("inf")}, "gauges['q'] must be a finite number, not inf"),
        ({f"g{i}": 1 for i in range(65)}, "gauges has 65 entries; at most 64"),
    ],
)
def test_malformed_gauges_are_refused_naming_the_field(gauges: Any, says: str) -> None:
    body = {"at": 1, "instances": {"x": {"app": "a", "workload": "w", "cpu": 1, "memory": 1}}}
    body["instances"]["x"]["gauges"] = gauges
    with pytest.raises(ValueError, match=None) as e:
        parse_report(body)
    assert says in str(e.value)


def test_gauges_may_be_negative_or_zero_and_are_read_by_name() -> None:
    body = {
        "at": 1,
        "instances": {
            "x": {"app": "a", "workload": "w", "cpu": 1, "memory": 1, "gauges": {"b": -2, "a": 0}}
        },
    }
    assert parse_report(body).instances["x"].gauges == (("a", 0.0), ("b", -2.0))


# --- the p99 from the proxies' latency histograms -------------------------------------------

BOUNDS = (10, 100, 1000)


def hist_report(
    at: float, counts: tuple[int, int, int, int], requests: int = 0, interval: float = 1.0
) -> NodeReport:
    """A report whose port carries ``latency_buckets``: per bucket (<=10, <=100, <=1000,
    slower) the responses since the proxy's totals began, made cumulative over buckets."""
    running, buckets = 0, []
    for le, n in zip((*BOUNDS, None), counts, strict=True):
        running += n
        buckets.append([le, running])
    data = {
        "at": at,
        "interval": interval,
        "ports": {"shop.api.http": {"requests": requests or running, "latency_buckets": buckets}},
    }
    return parse_report(data)


def test_histogram_quantile_interpolates_inside_the_bucket_as_prometheus() -> None:
    h = ((10.0, 100.0, 1000.0), (50.0, 90.0, 99.0, 100.0))
    assert histogram_quantile(0.5, h) == 10.0  # rank 50: the first bucket's top
    assert histogram_quantile(0.25, h) == 5.0  # the first bucket starts at 0
    assert histogram_quantile(0.7, h) == pytest.approx(55.0)  # 10 + 90 × (70-50)/(90-50)
    assert histogram_quantile(0.99, h) == pytest.approx(1000.0)  # rank 99: the (100, 1000] top
    assert histogram_quantile(0.995, h) == 1000.0  # in +Inf: the highest finite bound
    assert histogram_quantile(0.99, ((10.0,), (0.0, 0.0))) is None  # no response


def test_merge_histograms_sums_and_bounds_differing_ones_from_below() -> None:
    a = ((10.0, 100.0), (1.0, 2.0, 3.0))
    assert merge_histograms([a, a]) == ((10.0, 100.0), (2.0, 4.0, 6.0))
    b = ((50.0,), (4.0, 5.0))
    # at 10 b counts none (its first bound is 50), at 50 a counts its <=10 only
    assert merge_histograms([a, b]) == ((10.0, 50.0, 100.0), (1.0, 5.0, 6.0, 8.0))
    assert merge_histograms([]) is None


def test_p99_from_the_bucket_deltas_summed_over_nodes() -> None:
    clock = FakeClock(T0)
    w = Windows(clock)
    w.record("n1", hist_report(T0, (100, 0, 0, 0)))
    w.record("n2", hist_report(T0, (5, 5, 0, 0)))
    assert current(w, "p99_response_ms") is None  # no difference yet
    clock.advance(1)
    # this second: n1 90 fast and 5 in (10, 100]; n2 4 in (10, 100] and 1 in (100, 1000]
    w.record("n1", hist_report(T0 + 1, (190, 5, 0, 0)))
    w.record("n2", hist_report(T0 + 1, (5, 9, 1, 0)))
    # 100 responses: 90 <= 10, 9 in (10, 100], 1 in (100, 1000]; rank 99 is the 9th of 9
    assert current(w, "p99_response_ms") == pytest.approx(100.0)
    assert current(w, "p99_response_ms", "http") == pytest.approx(100.0)
    replica_p99 = w.service("shop", "api", 1)["ports"]["http"]["replicas"]
    assert replica_p99 == {}  # per replica: none (a proxy counts per service port)
    clock.advance(1)
    w.record("n1", hist_report(T0 + 2, (190, 5, 0, 0)))  # no response this second
    w.record("n2", hist_report(T0 + 2, (5, 9, 1, 0)))
    assert current(w, "p99_response_ms") is None


def test_a_histogram_that_went_down_was_reset_and_other_bounds_start_again() -> None:
    clock = FakeClock(T0)
    w = Windows(clock)
    w.record("n1", hist_report(T0, (100, 50, 0, 0)))
    clock.advance(1)
    w.record("n1", hist_report(T0 + 1, (0, 0, 2, 0)))  # a proxy restarted without its base
    # 2 in (100, 1000]: rank 1.98 of 2 -> 100 + 900 × 1.98/2
    assert current(w, "p99_response_ms") == pytest.approx(991.0)
    clock.advance(1)
    other = {
        "at": T0 + 2,
        "ports": {"shop.api.http": {"requests": 3, "latency_buckets": [[5, 1], [None, 3]]}},
    }
    w.record("n1", parse_report(other))  # new bounds (another agent): no difference yet
    assert current(w, "p99_response_ms") is None


def test_two_reports_in_one_second_add_their_histograms() -> None:
    clock = FakeClock(T0 + 0.1)
    w = Windows(clock)
    w.record("n1", hist_report(T0, (0, 0, 0, 0)))
    clock.advance(1)
    w.record("n1", hist_report(T0 + 1, (99, 0, 0, 0)))
    clock.advance(0.5)
    w.record("n1", hist_report(T0 + 1.5, (99, 0, 0, 1)))  # the same second: 100 in all
    assert current(w, "p99_response_ms") == pytest.approx(10.0)
    clock.advance(0.1)
    w.record("n1", hist_report(T0 + 1.6, (99, 0, 0, 3)))
    assert current(w, "p99_response_ms") == pytest.approx(1000.0)  # 3 of 102 past 1000


def test_a_node_reporting_every_5_s_weighs_its_responses_per_second() -> None:
    """Its histogram's difference holds 5 s of responses; summed as it is into one second it
    would outweigh the nodes that report every second. Each node's counts are taken per
    second of its interval (as its rates are) before they are summed."""
    clock = FakeClock(T0)
    w = Windows(clock)
    w.record("n1", hist_report(T0, (0, 0, 0, 0)))
    w.record("n5", hist_report(T0, (0, 0, 0, 0), interval=5))
    for s in range(1, 6):
        clock.advance(1)
        # n1, each second: 1,000 responses within 10 ms and 5 in (10, 100]
        w.record("n1", hist_report(T0 + s, (1000 * s, 5 * s, 0, 0)))
    # n5, over its 5 s: 50 in (100, 1000], 10 a second
    w.record("n5", hist_report(T0 + 5, (0, 0, 50, 0), interval=5))
    # a second: 1,015 responses, rank 1,004.85 is the 4.85th of the 5 in (10, 100]
    assert current(w, "p99_response_ms") == pytest.approx(10 + 90 * 4.85 / 5)
    assert current(w, "p99_response_ms", "http") == pytest.approx(10 + 90 * 4.85 / 5)
    # its rate is per second already: 10/s of n5's next to 1,005/s of n1's
    assert current(w, "requests_per_s") == pytest.approx(1015.0)


def test_the_per_second_scale_keeps_one_nodes_quantile() -> None:
    # one node alone: its p99 does not depend on the length of its interval
    got = []
    for interval in (1, 5):
        clock = FakeClock(T0)
        w = Windows(clock)
        w.record("n1", hist_report(T0, (0, 0, 0, 0), interval=interval))
        clock.advance(interval)
        w.record("n1", hist_report(T0 + interval, (90, 9, 1, 0), interval=interval))
        got.append(current(w, "p99_response_ms"))
    assert got == [pytest.approx(100.0), pytest.approx(100.0)]


@pytest.mark.parametrize(
    ("buckets", "says"),
    [
        ("x", "a list of 2 to 64"),
        ([[5, 1]], "a list of 2 to 64"),
        ([[5, 1], [None, 2]] * 40, "a list of 2 to 64"),
        ([[5, 1], [3, 2], [None, 2]], "the bounds must go up"),
        ([[5, 3], [10, 2], [None, 3]], "cumulative and cannot go down"),
        ([[5, 1], [10, 2]], "the last bucket's le must be null"),
        ([[None, 1], [None, 2]], "[0].le must be a number"),
        ([[5, -1], [None, 2]], "[0].count must be a number >= 0"),
        ([[5, 1, 2], [None, 2]], "must be a pair"),
    ],
)
def test_a_malformed_histogram_is_refused_naming_the_field(buckets: Any, says: str) -> None:
    body = {"at": 1, "ports": {"a.b.c": {"requests": 1, "latency_buckets": buckets}}}
    with pytest.raises(ValueError) as e:
        parse_report(body)
    assert "ports['a.b.c'].latency_buckets" in str(e.value) and says in str(e.value)


def test_an_early_report_stands_for_its_second_alone() -> None:
    """An agent reports early when the load jumped: the rate before the jump is not the
    second's, so the early report's rate is not merged with the one before it."""
    clock = FakeClock(T0)
    w = Windows(clock)
    w.record("n1", report(T0, 0))
    clock.advance(0.9)
    w.record("n1", report(T0 + 1.0, 50))  # 50/s
    clock.advance(0.05)  # the same server second
    early = parse_report(  # 500/s for 0.25 s
        {**raw_report(T0 + 1.25, 175), "early": True, "jumped": ["shop.api.http"]}
    )
    assert early.early and [str(p) for p in early.jumped] == ["shop.api.http"]
    w.record("n1", early)
    assert current(w, "requests_per_s") == 500.0  # not (50 + 125) / 1.25


def test_early_must_be_a_boolean_and_jumped_service_ports() -> None:
    with pytest.raises(ValueError, match="early must be true or false"):
        parse_report({**raw_report(T0, 0), "early": "yes"})
    with pytest.raises(ValueError, match=r"jumped\[0\]: not a service port"):
        parse_report({**raw_report(T0, 0), "early": True, "jumped": ["../x"]})
    with pytest.raises(ValueError, match="jumped must be a list"):
        parse_report({**raw_report(T0, 0), "early": True, "jumped": "shop.api.http"})


def raw_report(at: float, requests: int) -> dict[str, Any]:
    """A report's body as the agent sends it: one HTTP port, no instance."""
    port = {"mode": "http", "requests": requests, "errors": 0, "active": 0, "endpoints": {}}
    return {"at": at, "interval": 1.0, "instances": {}, "ports": {"shop.api.http": port}}

"""The horizontal autoscaler (``elastin.autoscale.horizontal.decide``) on a fake clock: HPA's
formula and tolerance, the largest proposal, not-ready replicas and missing metrics,
stabilization (no flapping), rate policies, bounds, scale to zero and back, and a reason that
says why."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import pairwise

import pytest

from elastin.autoscale.horizontal import (
    Decision,
    History,
    Observations,
    Recommendation,
    ReplicaObservation,
    ScaleEvent,
    decide,
)
from elastin.model.resources import Resources
from elastin.model.workload import (
    Autoscale,
    Behavior,
    MetricTarget,
    ScalingPolicy,
    ScalingRules,
)
from elastin.testing import FakeClock

REQUEST = Resources(cpu=1000, memory=100 << 20)
CPU70 = MetricTarget("cpu", 0.7)
RPS100 = MetricTarget("rps", 100.0)
# no stabilization and no rate limit: the proposals as they are
FREE = Behavior(
    ScalingRules(0.0, "max", (ScalingPolicy("percent", 10_000, 1.0),)),
    ScalingRules(0.0, "max", (ScalingPolicy("percent", 100, 1.0),)),
)


def policy(*metrics: MetricTarget, **kw: object) -> Autoscale:
    base = Autoscale(min=1, max=100, metrics=metrics or (CPU70,), behavior=FREE)
    return replace(base, **kw)  # type: ignore[arg-type]


def replicas(n: int, **values: object) -> tuple[ReplicaObservation, ...]:
    """``n`` ready replicas, started long ago, each with ``values``."""
    return tuple(ReplicaObservation(f"r{i}", **values) for i in range(n))  # type: ignore[arg-type]


def cpu(
    *used: float | None, ready: bool = True, started_at: float = 0.0
) -> tuple[ReplicaObservation, ...]:
    """Replicas using these shares of a core each (None: no value)."""
    return tuple(
        ReplicaObservation(
            f"c{i}", ready=ready, started_at=started_at, cpu=None if u is None else u * 1000
        )
        for i, u in enumerate(used)
    )


def once(
    p: Autoscale, current: int, reps: tuple[ReplicaObservation, ...], **kw: object
) -> Decision:
    obs = Observations(replicas=reps, request=REQUEST, **kw)  # type: ignore[arg-type]
    return decide(p, current, obs, History(), 1_000_000.0)


@dataclass
class Service:
    """A service under the autoscaler on a fake clock: each ``tick`` evaluates once and
    applies the decision, as the server will every ``interval``."""

    policy: Autoscale
    replicas: int
    clock: FakeClock = field(default_factory=FakeClock)
    history: History = field(default_factory=History)
    decisions: list[Decision] = field(default_factory=list)

    def tick(self, load: float, seconds: float = 1.0, **kw: object) -> Decision:
        """One evaluation with ``load`` requests/s spread over the replicas."""
        self.clock.advance(seconds)
        each = load / self.replicas if self.replicas else 0.0
        obs = Observations(replicas(self.replicas, rps=each), REQUEST, **kw)  # type: ignore[arg-type]
        d = decide(self.policy, self.replicas, obs, self.history, self.clock.monotonic())
        self.history, self.replicas = d.history, d.desired
        self.decisions.append(d)
        return d

    def run(self, load: float, seconds: int) -> list[int]:
        return [self.tick(load).desired for _ in range(seconds)]


# -- HPA's formula -------------------------------------------------------------------------


def test_desired_is_ceil_of_current_times_value_over_target() -> None:
    d = once(policy(), 2, cpu(1.4, 1.4))
    assert d.desired == 4 and d.recommended == 4 and d.limit == ""
    (p,) = d.proposals
    assert p.value == pytest.approx(1.4) and p.replicas == 4
    assert "scale up 2 → 4" in d.reason and "cpu 140% (target 70%) → 4" in d.reason
    assert "bounds 1..100" in d.reason
    assert d.history.events == (ScaleEvent(1_000_000.0, 2),)


def test_a_value_just_over_the_target_adds_no_replica_from_float_noise() -> None:
    # 3 replicas at 70.0000001% would be ceil(3.0000004) = 4 without the guard; within
    # tolerance anyway, so use a zero tolerance to see the rounding itself
    d = once(policy(tolerance=0.0), 3, cpu(0.7 * 1.0000000001, 0.7, 0.7))
    assert d.desired == 3


@pytest.mark.parametrize(
    ("used", "expected"),
    [
        (0.7 * 1.05, 4),  # 5% over: within the tolerance of 10%
        (0.7 * 0.92, 4),  # 8% under: within
        (0.7 * 1.11, 5),  # 11% over: ceil(4 × 1.11) = 5
        (0.7 * 0.85, 4),  # 15% under: ceil(4 × 0.85) = ceil(3.4) = 4, still 4
        (0.7 * 0.70, 3),  # 30% under: ceil(2.8) = 3
    ],
)
def test_tolerance(used: float, expected: int) -> None:
    d = once(policy(), 4, cpu(used, used, used, used))
    assert d.desired == expected
    if abs(used / 0.7 - 1) <= 0.1:
        assert "within tolerance" in d.proposals[0].note


def test_the_largest_proposal_across_metrics_wins() -> None:
    reps = tuple(replace(r, rps=250.0) for r in cpu(0.7, 0.7))
    d = once(policy(CPU70, RPS100), 2, reps)
    assert [p.replicas for p in d.proposals] == [2, 5]
    assert d.desired == 5
    assert "rps 250/s (target 100/s) → 5" in d.reason


def test_every_kind_of_metric() -> None:
    reps = tuple(
        ReplicaObservation(f"r{i}", memory=90 << 20, inflight=12.0, gauges=(("queue_depth", 30.0),))
        for i in range(2)
    )
    p = policy(
        MetricTarget("memory", 0.6),
        MetricTarget("inflight", 4.0),
        MetricTarget("p99", 0.25),
        MetricTarget("app", 10.0, name="queue_depth", port="metrics"),
    )
    d = once(p, 2, reps, p99=0.5)
    # memory 90% of 60% → 3; inflight 12 of 4 → 6; p99 500ms of 250ms → 4; queue 30 of 10 → 6
    assert [x.replicas for x in d.proposals] == [3, 6, 4, 6]
    assert d.desired == 6
    assert "p99 500ms (target 250ms) → 4" in d.reason and "queue_depth 30 (target 10)" in d.reason


# -- readiness and missing values ------------------------------------------------------------


def test_not_ready_replicas_are_left_out_of_a_scale_down() -> None:
    reps = cpu(0.35, 0.35) + cpu(0.9, ready=False)
    d = once(policy(), 3, reps)
    # only the two ready ones count: ratio 0.5 → ceil(0.5 × 2) = 1
    assert d.desired == 1
    assert "1 not ready left out" in d.proposals[0].note


def test_starting_replicas_hold_a_scale_up_back() -> None:
    """HPA: on a scale-up, replicas not yet ready count as using nothing; here that turns the
    direction, so the count stays rather than adding replicas the new ones will absorb."""
    reps = cpu(1.4) + cpu(None, None, None, ready=False)
    d = once(policy(), 4, reps)
    assert d.desired == 4
    assert "3 not ready counted as 0" in d.proposals[0].note


def test_a_replica_in_its_startup_grace_is_left_out_of_cpu_only() -> None:
    now = 1_000_000.0
    warm = ReplicaObservation("new", ready=True, started_at=now - 5, cpu=3000.0, rps=100.0)
    old = tuple(replace(r, rps=100.0) for r in cpu(0.7, 0.7))
    d = once(policy(CPU70, RPS100), 3, (*old, warm))
    cpu_p, rps_p = d.proposals
    # its start-up burst (300%) is not read as load: 2 of 2 at target + 1 counted as 0 ...
    assert cpu_p.value == pytest.approx(0.7) and cpu_p.replicas == 3
    assert "1 not ready" in cpu_p.note
    # ... while it counts for requests: 3 × 100/s of 100 → 3
    assert rps_p.replicas == 3 and rps_p.value == pytest.approx(100.0)
    assert d.desired == 3


def test_replicas_without_a_value_are_assumed_busy_on_a_scale_down() -> None:
    d = once(policy(), 4, cpu(0.35, 0.35, None, None))
    # without the assumption: ceil(0.5 × 2) = 1; with 100% for the two: ratio 0.96, kept
    assert d.desired == 4
    assert "2 without a value counted as 100%" in d.proposals[0].note


def test_replicas_without_a_value_are_assumed_idle_on_a_scale_up() -> None:
    d = once(policy(), 4, cpu(2.1, 2.1, 2.1, None))
    # (2.1 × 3 + 0) / 4 / 0.7 = 2.25 → ceil(9) = 9
    assert d.desired == 9
    assert "1 without a value counted as 0" in d.proposals[0].note


def test_a_missing_rps_value_counts_as_the_target_on_a_scale_down() -> None:
    reps = (*replicas(2, rps=20.0), ReplicaObservation("x"))
    d = once(policy(RPS100), 3, reps)
    # (20 + 20 + 100) / 3 = 46.7/s → ceil(0.467 × 3) = 2
    assert d.desired == 2
    assert "counted as 100/s" in d.proposals[0].note


def test_a_metric_without_any_value_blocks_a_scale_down_but_not_a_scale_up() -> None:
    p = policy(CPU70, RPS100)
    down = once(p, 4, cpu(0.1, 0.1, 0.1, 0.1))  # cpu proposes 1, rps has nothing
    assert down.desired == 4 and down.limit == "partial-metrics"
    assert "rps: no value" in down.reason
    up = once(p, 2, cpu(1.4, 1.4))
    assert up.desired == 4


def test_no_value_at_all_keeps_the_count() -> None:
    d = once(policy(), 3, cpu(None, None, None))
    assert d.desired == 3 and d.limit == "no-metrics"
    assert d.history.recommendations == ()


# -- stabilization and flapping --------------------------------------------------------------


def test_the_scale_down_window_keeps_the_highest_recent_recommendation() -> None:
    p = policy(
        RPS100,
        behavior=replace(FREE, scale_down=replace(FREE.scale_down, stabilization_window=60.0)),
    )
    s = Service(p, 2)
    assert s.tick(1000).desired == 10
    s.run(1000, 9)
    # load drops: the recommendations of the last 60 s (10) hold the count
    held = s.run(200, 59)
    assert set(held) == {10}
    assert s.decisions[-1].limit == "scale-down-stabilization"
    assert "highest recommendation of the scale-down window of 60s" in s.decisions[-1].reason
    # 60 s after the last high recommendation
    assert s.tick(200).desired == 2


def test_a_load_that_comes_and_goes_does_not_flap_the_replicas() -> None:
    """Load alternating every 5 s between 800/s and 200/s for three minutes: up once and
    stays, the default 60 s scale-down window outlasting every dip."""
    s = Service(policy(RPS100, behavior=Behavior()), 2)
    counts = []
    for second in range(180):
        counts.append(s.tick(800 if (second // 5) % 2 == 0 else 200).desired)
    changes = [b - a for a, b in pairwise(counts) if b != a]
    assert all(c > 0 for c in changes), counts
    assert counts[-1] == 8


def test_without_a_scale_down_window_the_same_load_flaps() -> None:
    """The counterpart of the test above: the window is what prevents it."""
    s = Service(policy(RPS100), 2)
    counts = [s.tick(800 if (t // 5) % 2 == 0 else 200).desired for t in range(60)]
    downs = sum(1 for a, b in pairwise(counts) if b < a)
    assert downs >= 5


def test_the_scale_up_window_ignores_a_short_spike() -> None:
    up = ScalingRules(30.0, "max", FREE.scale_up.policies)
    s = Service(policy(RPS100, behavior=replace(FREE, scale_up=up)), 2)
    s.run(200, 40)
    spike = s.run(1000, 10)
    assert set(spike) == {2}
    assert s.decisions[-1].limit == "scale-up-stabilization"
    s.run(200, 5)
    # a lasting rise: once every recommendation of the last 30 s is above 2
    sustained = s.run(1000, 31)
    assert sustained[-1] == 10 and sustained[0] == 2


def test_the_history_keeps_only_what_the_windows_and_periods_need() -> None:
    p = policy(RPS100, behavior=Behavior())  # windows 0 and 60 s, periods 15 s
    old = History(
        (Recommendation(0.0, 9), Recommendation(990.0, 3)),
        (ScaleEvent(0.0, 5), ScaleEvent(990.0, 1)),
    )
    d = decide(p, 3, Observations(replicas(3, rps=100.0), REQUEST), old, 1000.0)
    assert d.history.recommendations == (Recommendation(990.0, 3), Recommendation(1000.0, 3))
    assert d.history.events == (ScaleEvent(990.0, 1),)


# -- rate policies -----------------------------------------------------------------------------


def test_hpas_default_scale_up_policy_picks_the_larger_of_four_pods_and_double() -> None:
    s = Service(policy(RPS100, behavior=Behavior()), 2)
    first = s.tick(5000)
    assert first.desired == 6  # max(2 + 4, 2 × 2)
    assert first.recommended == 50 and first.limit == "scale-up-policy"
    assert "limited by the scale-up policy (max of +4 per 15s, +100% per 15s)" in first.reason
    assert s.run(5000, 14) == [6] * 14  # the period started at 2: nothing more until it ends
    assert s.tick(5000).desired == 12  # max(6 + 4, 6 × 2)
    assert s.run(5000, 15)[-1] == 24
    assert s.run(5000, 15)[-1] == 48
    assert s.run(5000, 15)[-1] == 48  # 104/s each: within the tolerance of 100/s
    assert s.decisions[-1].limit == "" and "within tolerance" in s.decisions[-1].reason


def test_select_min_picks_the_smaller_change() -> None:
    up = ScalingRules(
        0.0, "min", (ScalingPolicy("pods", 4, 15.0), ScalingPolicy("percent", 100, 15.0))
    )
    s = Service(policy(RPS100, behavior=replace(FREE, scale_up=up)), 2)
    assert s.tick(5000).desired == 4  # min(2 + 4, 2 × 2)


def test_select_disabled_forbids_the_direction() -> None:
    down = ScalingRules(0.0, "disabled", ())
    s = Service(policy(RPS100, behavior=replace(FREE, scale_down=down)), 8)
    d = s.tick(100)
    assert d.desired == 8 and d.limit == "scale-down-disabled"
    assert s.tick(5000).desired == 50  # up is still free


def test_a_percent_scale_down_policy_counts_from_the_start_of_its_period() -> None:
    down = ScalingRules(0.0, "max", (ScalingPolicy("percent", 50, 60.0),))
    s = Service(policy(RPS100, behavior=replace(FREE, scale_down=down)), 10)
    assert s.tick(100).desired == 5
    assert s.run(100, 59) == [5] * 59  # 50% of the 10 of the period's start: done
    assert s.tick(100).desired == 2  # floor(5 × 0.5)
    assert s.decisions[-1].limit == "scale-down-policy"
    assert s.run(100, 60)[-1] == 1


def test_a_pods_scale_down_policy() -> None:
    down = ScalingRules(0.0, "max", (ScalingPolicy("pods", 1, 10.0),))
    s = Service(policy(RPS100, behavior=replace(FREE, scale_down=down)), 4)
    counts = s.run(100, 31)
    assert counts[0] == 3 and counts[10] == 2 and counts[20] == 1


# -- bounds --------------------------------------------------------------------------------------


def test_max_and_min_bound_the_recommendation() -> None:
    p = policy(RPS100, max=10, min=2)
    high = once(p, 4, replicas(4, rps=1000.0))
    assert high.desired == 10 and high.recommended == 40 and high.limit == "max"
    assert "held at max" in high.reason and "bounds 2..10" in high.reason
    low = once(p, 4, replicas(4, rps=1.0))
    assert low.desired == 2 and low.limit == "min"


def test_a_count_outside_the_bounds_is_brought_into_them() -> None:
    p = policy(RPS100, max=10, min=2)
    assert once(p, 12, replicas(12, rps=100.0)).desired == 10
    d = once(p, 1, replicas(1, rps=100.0))
    assert d.desired == 2 and d.limit == "below-min"


def test_zero_replicas_with_min_above_zero_pause_the_autoscaler() -> None:
    d = once(policy(RPS100), 0, ())
    assert d.desired == 0 and d.limit == "paused" and "paused" in d.reason


def test_only_vertical_scaling_leaves_the_count_alone() -> None:
    d = once(Autoscale(min=3, max=3), 3, replicas(3, rps=1e6))
    assert d.desired == 3 and d.limit == "off"


# -- scale to zero and back ------------------------------------------------------------------


def test_scale_to_zero_after_the_idle_period_and_back_on_a_held_request() -> None:
    p = policy(RPS100, min=0, max=10, idle_after=300.0, behavior=Behavior())
    s = Service(p, 1)
    # no traffic yet, but not for long enough: the last replica stays
    d = s.tick(0, idle_for=299.0)
    assert d.desired == 1 and d.limit == "min"
    assert "the last replica goes after 300s without a request" in d.reason
    assert "bounds 0..10 (1 until idle)" in d.reason
    d = s.tick(0, idle_for=300.0)
    assert d.desired == 0 and d.limit == "idle"
    assert "no request for 300s (idle_after 300s): scale to zero" in d.reason
    # at zero, nothing to do until a request arrives
    d = s.tick(0, idle_for=400.0)
    assert d.desired == 0 and not d.changed
    d = s.tick(0, held=3)
    assert d.desired == 1 and d.limit == "held-request"
    assert "3 request(s) held: one replica starts" in d.reason
    # then the metrics take over, within the scale-up policy (the 0 → 1 counts in its period)
    d = s.tick(900)
    # the period's start count is 1 (one removed and one added within 15 s): max(1 + 4, 1 × 2)
    assert d.desired == 5
    assert d.limit == "scale-up-policy"


def test_scale_to_zero_waits_for_held_requests() -> None:
    p = policy(RPS100, min=0, max=10)
    d = once(p, 1, replicas(1, rps=0.0), idle_for=1000.0, held=1)
    assert d.desired == 1


def test_a_service_in_use_is_not_idle_whatever_idle_after_says() -> None:
    p = replace(policy(RPS100, min=0, max=10), idle_after=0.0)
    assert once(p, 1, replicas(1, rps=50.0), idle_for=0.0).desired == 1


def test_a_service_with_min_one_never_goes_to_zero_when_idle() -> None:
    d = once(policy(RPS100, min=1), 1, replicas(1, rps=0.0), idle_for=1e6)
    assert d.desired == 1


def test_decide_is_pure() -> None:
    p = policy(RPS100, behavior=Behavior())
    obs = Observations(replicas(3, rps=300.0), REQUEST)
    h = History((Recommendation(999.0, 4),), (ScaleEvent(999.0, 1),))
    assert decide(p, 3, obs, h, 1000.0) == decide(p, 3, obs, h, 1000.0)
    assert h == History((Recommendation(999.0, 4),), (ScaleEvent(999.0, 1),))

"""The vertical recommender (``elastin.autoscale.vertical``) on a fake clock: the decaying
histogram's percentile and decay, the target as a percentile plus a margin, memory from the
peaks, the bounds, and an OOM kill raising memory at once."""

from __future__ import annotations

import pytest

from elastin.autoscale.vertical import DecayingHistogram, Recommender
from elastin.model.resources import Resources
from elastin.model.workload import Vertical
from elastin.testing import FakeClock

MIB = 1024 * 1024
HOUR = 3600.0
DAY = 86400.0


def recommender(**kw: object) -> tuple[Recommender, FakeClock]:
    clock = FakeClock(start=1_000_000.0)
    return Recommender(Vertical(mode="recommend", **kw), clock), clock  # type: ignore[arg-type]


def test_the_histogram_percentile_is_within_a_bucket_of_the_truth() -> None:
    h = DecayingHistogram(10.0, 1e6, DAY)
    for v in range(1, 1001):
        h.add(float(v), at=0.0)
    for p, truth in ((0.5, 500), (0.9, 900), (0.95, 950), (1.0, 1000)):
        assert truth <= h.percentile(p) <= truth * 1.05 + 1e-9


def test_an_empty_histogram_and_a_subtracted_sample() -> None:
    h = DecayingHistogram(10.0, 1e6, DAY)
    assert h.empty and h.percentile(0.9) == 0.0
    h.add(100.0, at=5.0)
    h.add(500.0, at=5.0)
    h.subtract(500.0, at=5.0)
    assert 100.0 <= h.percentile(1.0) <= 105.0


def test_old_samples_weigh_half_as_much_every_half_life() -> None:
    h = DecayingHistogram(10.0, 1e6, HOUR)
    h.add(800.0, at=0.0)
    h.add(200.0, at=HOUR)
    b_old, b_new = h.bucket(800.0), h.bucket(200.0)
    assert h.weights[b_new] == pytest.approx(2 * h.weights[b_old])


def test_weights_stay_finite_over_a_very_long_run() -> None:
    h = DecayingHistogram(10.0, 1e6, 1.0)
    for t in range(0, 5000, 50):  # 5000 half lives
        h.add(300.0, at=float(t))
    assert h.total > 0 and all(w < 1e40 for w in h.weights.values())
    assert 300.0 <= h.percentile(0.9) <= 315.0


def test_the_cpu_target_is_the_percentile_plus_the_margin() -> None:
    r, clock = recommender()
    assert r.recommend() is None
    for _ in range(93):
        clock.advance(10)
        r.observe(cpu=200.0, memory=None)
    for _ in range(7):
        clock.advance(10)
        r.observe(cpu=900.0, memory=None)
    rec = r.recommend()
    assert rec is not None
    # 93% of the samples at 200m: p90 is in the 200m bucket (up to 5% above), plus 15%
    assert 230 <= rec.target.cpu <= 243
    assert rec.lower.cpu <= rec.target.cpu
    assert 900 * 1.15 <= rec.upper.cpu <= 900 * 1.05 * 1.15 + 1  # p95 sees the busy 10%
    assert "cpu p90" in rec.reason and "+ 15%" in rec.reason and "no memory sample" in rec.reason


def test_the_percentile_and_margin_are_the_policys() -> None:
    r, clock = recommender(percentile=0.99, margin=0.0)
    for v in [200.0] * 90 + [900.0] * 10:
        clock.advance(10)
        r.observe(cpu=v, memory=None)
    rec = r.recommend()
    assert rec is not None and 900 <= rec.target.cpu <= 945


def test_decay_lets_the_recommendation_follow_a_lasting_change() -> None:
    """A service busy at 800m long ago and at 200m lately: with a short half life the old
    samples have faded; with VPA's 24 h they still count."""
    for half_life, low in ((HOUR, True), (DAY, False)):
        r, clock = recommender(half_life=half_life)
        for _ in range(50):
            r.observe(cpu=800.0, memory=None)
        clock.advance(10 * HOUR)
        for _ in range(50):
            r.observe(cpu=200.0, memory=None)
        rec = r.recommend()
        assert rec is not None
        assert (rec.target.cpu < 300) is low, (half_life, rec.target)


def test_memory_follows_the_peak_of_each_interval() -> None:
    r, clock = recommender(margin=0.0)
    for used in (100, 150, 120):  # one day: its peak is 150Mi
        clock.advance(HOUR)
        r.observe(cpu=None, memory=used * MIB)
    rec = r.recommend()
    assert rec is not None
    assert 150 * MIB <= rec.target.memory <= 150 * MIB * 1.05 + 1
    assert sum(1 for w in r.memory.weights.values() if w > 0) == 1  # the 100Mi peak replaced


def test_memory_peaks_of_many_days_make_the_percentile() -> None:
    r, clock = recommender(margin=0.0, half_life=1e9)  # (no decay to speak of)
    for day in range(40):
        clock.advance(DAY)
        r.observe(cpu=None, memory=(400 if day in (3, 17, 30) else 100) * MIB)
    rec = r.recommend()
    assert rec is not None
    assert 100 * MIB <= rec.target.memory <= 106 * MIB  # 3 days in 40 (7.5%) above p90 ...
    assert rec.upper.memory >= 400 * MIB  # ... but not above p95


def test_an_oom_kill_raises_memory_at_once() -> None:
    r, clock = recommender()
    for _ in range(30):
        for _ in range(24):
            clock.advance(HOUR)
            r.observe(cpu=100.0, memory=50 * MIB)
    before = r.recommend()
    assert before is not None and before.target.memory < 64 * MIB
    request = Resources(100, 64 * MIB)
    r.oom(limit=64 * MIB, observed=63 * MIB)
    after = r.recommend()
    assert after is not None
    bump = int(1.2 * 64 * MIB) + 1
    assert after.target.memory >= bump - 1 and after.lower.memory >= bump - 1
    assert after.outside(request)  # the killed request is below what is now recommended
    assert "OOM-killed at 64Mi: memory at least 76.8Mi" in after.reason
    # the floor lasts a half life; the bumped peak then fades like any other
    clock.advance(DAY + 1)
    r.observe(cpu=100.0, memory=50 * MIB)
    later = r.recommend()
    assert later is not None and "OOM" not in later.reason


def test_bounds_hold_the_recommendation() -> None:
    r, clock = recommender(min_cpu=250, max_memory=100 * MIB)
    for _ in range(10):
        clock.advance(60)
        r.observe(cpu=20.0, memory=300 * MIB)
    rec = r.recommend()
    assert rec is not None
    assert rec.target == Resources(250, 100 * MIB, 0)
    assert rec.lower.cpu == 250 and rec.upper.memory == 100 * MIB
    assert "cpu held at min" in rec.reason and "memory held at max" in rec.reason


def test_a_tiny_service_gets_the_floors() -> None:
    r, _ = recommender()
    r.observe(cpu=0.0, memory=0)
    rec = r.recommend()
    assert rec is not None and rec.target.cpu >= 10 and rec.target.memory >= 4 * MIB


def test_samples_without_a_time_take_the_clocks() -> None:
    r, clock = recommender(half_life=HOUR)
    r.observe(cpu=800.0, memory=None)
    clock.advance(20 * HOUR)
    r.observe(cpu=200.0, memory=None)
    rec = r.recommend()
    assert rec is not None and rec.target.cpu < 300  # the first sample has faded


def test_a_request_inside_the_range_is_left_alone() -> None:
    r, clock = recommender()
    for v in (180.0, 200.0, 220.0) * 20:
        clock.advance(30)
        r.observe(cpu=v, memory=100 * MIB)
    rec = r.recommend()
    assert rec is not None and rec.mode == "recommend"
    assert not rec.outside(rec.target)
    assert rec.outside(Resources(rec.upper.cpu + 1, rec.target.memory))
    assert rec.outside(Resources(rec.target.cpu, rec.lower.memory - 1))

"""The vertical recommender: the cpu and memory a service's instances should request.

As Kubernetes' VPA (and Borg's Autopilot) do it, from observed usage:

- cpu: every usage sample goes into a **decaying histogram** (exponential buckets, each
  sample's weight doubling every ``half_life`` so that old samples count for less);
- memory: the **peak** of each ``peak_interval`` (VPA: 24 h) goes into its own decaying
  histogram (memory is a hard limit, so the peaks matter, not the average);
- the target is the ``percentile`` (VPA: p90) of each histogram plus ``margin`` (VPA: 15%),
  with a lower bound at p50 and an upper bound at p95 (each with the margin), all within the
  policy's ``min``/``max`` (and never below 10m of cpu or 4Mi of memory);
- an OOM kill raises the memory recommendation at once: to ``max(observed, 1.2 × limit)``
  (VPA's bump), added as the window's peak and kept as a floor for ``half_life``.

``Recommender`` holds the histograms of one service (fed with samples, each with its time, and
a ``Clock`` for the samples that come without one); ``recommend()`` returns a
``VerticalRecommendation`` whose ``outside(request)`` says whether the current request is far
enough off (outside lower..upper) to be worth a resize, as VPA's updater decides. No I/O; the
agent's samples and the resize itself are the server's and the agent's business
(``server/vertical.py``, the agent's runner).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from elastin.clock import Clock
from elastin.model.resources import Resources
from elastin.model.units import format_cpu, format_size
from elastin.model.workload import Vertical

MIB = 1024 * 1024
CPU_FIRST_BUCKET = 10.0  # millicores (VPA: 0.01 cores)
CPU_TOP = 1024 * 1000.0  # the spec's most
MEMORY_FIRST_BUCKET = float(MIB)  # VPA: 10 MB; Elastin's tasks are often smaller
MEMORY_TOP = float(64 * 1024**4)
BUCKET_RATIO = 1.05  # VPA's: each bucket 5% wider than the one before
MAX_DECAY_EXPONENT = 100.0  # weights are rescaled before 2**exponent grows unwieldy
LOWER_PERCENTILE = 0.5  # VPA's lower bound
UPPER_PERCENTILE = 0.95  # VPA's upper bound
OOM_BUMP_RATIO = 1.2  # VPA's
MIN_CPU = 10  # millicores
MIN_MEMORY = 4 * MIB  # the spec's least


class DecayingHistogram:
    """A histogram of values with exponentially growing buckets and weights that halve every
    ``half_life`` seconds of age (as VPA's ``decayingHistogram``). Each weight is stored
    relative to a reference time, moved forward (and the weights rescaled) when a sample comes
    much later, so no number overflows however long it runs."""

    def __init__(self, first: float, top: float, half_life: float) -> None:
        self.first = first
        self.top = top
        self.half_life = half_life
        self.weights: dict[int, float] = {}
        self.total = 0.0
        self.reference = 0.0
        self._started = False

    def bucket(self, value: float) -> int:
        """Bucket 0 holds ``[0, first)``, bucket i ``[first × r^(i−1), first × r^i)``."""
        value = min(max(value, 0.0), self.top)
        if value < self.first:
            return 0
        return math.floor(math.log(value / self.first) / math.log(BUCKET_RATIO)) + 1

    def upper(self, bucket: int) -> float:
        """Where ``bucket`` ends."""
        return float(self.first * BUCKET_RATIO**bucket)

    def _weight(self, weight: float, at: float) -> float:
        if not self._started:
            self.reference, self._started = at, True
        exponent = (at - self.reference) / self.half_life
        if exponent > MAX_DECAY_EXPONENT:
            scale = 2.0**-exponent
            self.weights = {b: w * scale for b, w in self.weights.items() if w * scale > 0}
            self.total = sum(self.weights.values())
            self.reference, exponent = at, 0.0
        return float(weight * 2.0**exponent)

    def add(self, value: float, at: float, weight: float = 1.0) -> None:
        w = self._weight(weight, at)
        b = self.bucket(value)
        self.weights[b] = self.weights.get(b, 0.0) + w
        self.total += w

    def subtract(self, value: float, at: float, weight: float = 1.0) -> None:
        """Take back a sample ``add`` put in with the same value, time and weight."""
        w = self._weight(weight, at)
        b = self.bucket(value)
        left = self.weights.get(b, 0.0) - w
        if left <= self.total * 1e-12:
            self.weights.pop(b, None)
        else:
            self.weights[b] = left
        self.total = sum(self.weights.values())

    @property
    def empty(self) -> bool:
        return self.total <= 0.0

    def percentile(self, p: float) -> float:
        """The end of the bucket where the weight up to it first reaches ``p`` of the total
        (0 when empty)."""
        if self.empty:
            return 0.0
        threshold, seen = p * self.total, 0.0
        last = max(self.weights)
        for b in sorted(self.weights):
            seen += self.weights[b]
            if seen >= threshold * (1 - 1e-12):
                return self.upper(b)
        return self.upper(last)  # pragma: no cover - float rounding at p = 1


@dataclass(frozen=True)
class VerticalRecommendation:
    """What a service's instances should request (``target``), and the range within which a
    request is close enough to leave alone (``lower``..``upper``); ``reason`` for an event."""

    mode: str
    target: Resources
    lower: Resources
    upper: Resources
    reason: str

    def outside(self, request: Resources) -> bool:
        """Whether ``request``'s cpu or memory lies outside lower..upper: worth a resize (in
        ``auto`` mode) or a notice (in ``recommend``)."""
        return not (
            self.lower.cpu <= request.cpu <= self.upper.cpu
            and self.lower.memory <= request.memory <= self.upper.memory
        )


class Recommender:
    """The vertical recommender of one service (see the module)."""

    def __init__(self, policy: Vertical, clock: Clock, *, peak_interval: float = 86400.0) -> None:
        self.policy = policy
        self.clock = clock
        self.peak_interval = peak_interval
        self.cpu = DecayingHistogram(CPU_FIRST_BUCKET, CPU_TOP, policy.half_life)
        self.memory = DecayingHistogram(MEMORY_FIRST_BUCKET, MEMORY_TOP, policy.half_life)
        self._window: float | None = None  # start of the current memory peak window
        self._peak = 0.0
        self._oom_floor = 0
        self._oom_at = 0.0
        self._oom_limit = 0
        self.samples = 0

    def _now(self, at: float | None) -> float:
        return self.clock.time() if at is None else at

    def observe(self, cpu: float | None, memory: int | None, at: float | None = None) -> None:
        """One instance's usage: ``cpu`` in millicores, ``memory`` in bytes (None: not
        measured), at ``at`` (default: the clock's time)."""
        now = self._now(at)
        if cpu is not None and cpu >= 0:
            self.cpu.add(cpu, now)
            self.samples += 1
        if memory is not None and memory >= 0:
            self._memory_peak(float(memory), now)

    def _memory_peak(self, value: float, now: float) -> None:
        """Keep the window's peak in the memory histogram (VPA: replace it when it grows)."""
        if self._window is None or now >= self._window + self.peak_interval:
            start = now if self._window is None else self._window
            while now >= start + self.peak_interval:
                start += self.peak_interval
            self._window, self._peak = start, value
            self.memory.add(value, start)
            return
        if value > self._peak:
            self.memory.subtract(self._peak, self._window)
            self.memory.add(value, self._window)
            self._peak = value

    def oom(self, limit: int, observed: int = 0, at: float | None = None) -> None:
        """An instance was OOM-killed at ``limit`` bytes (having used ``observed``): the memory
        recommendation rises at once to ``max(observed, 1.2 × limit)``."""
        now = self._now(at)
        bump = max(observed, math.ceil(OOM_BUMP_RATIO * limit))
        self._memory_peak(float(bump), now)
        if bump >= self._oom_floor or now >= self._oom_at + self.policy.half_life:
            self._oom_floor, self._oom_at, self._oom_limit = bump, now, limit

    def recommend(self, at: float | None = None) -> VerticalRecommendation | None:
        """The recommendation from what was observed so far; None before any sample."""
        now = self._now(at)
        if self.cpu.empty and self.memory.empty:
            return None
        p, margin = self.policy.percentile, 1.0 + self.policy.margin
        lower_p, upper_p = min(LOWER_PERCENTILE, p), max(UPPER_PERCENTILE, p)
        cpu = [self.cpu.percentile(q) * margin for q in (lower_p, p, upper_p)]
        memory = [self.memory.percentile(q) * margin for q in (lower_p, p, upper_p)]
        notes = []
        if not self.cpu.empty:
            notes.append(
                f"cpu p{p * 100:g} {format_cpu(self.cpu.percentile(p))} + "
                f"{self.policy.margin * 100:g}% → {format_cpu(math.ceil(cpu[1]))}"
            )
        if not self.memory.empty:
            notes.append(
                f"memory p{p * 100:g} of peaks {format_size(self.memory.percentile(p))} + "
                f"{self.policy.margin * 100:g}% → {format_size(math.ceil(memory[1]))}"
            )
        oom = self._oom_floor if now < self._oom_at + self.policy.half_life else 0
        if oom:
            memory = [max(m, oom) for m in memory]
            notes.append(
                f"OOM-killed at {format_size(self._oom_limit)}: memory at least {format_size(oom)}"
            )
        v = self.policy
        cpus, cpu_held = _bound([math.ceil(c) for c in cpu], MIN_CPU, v.min_cpu, v.max_cpu)
        mems, mem_held = _bound(
            [math.ceil(m) for m in memory], MIN_MEMORY, v.min_memory, v.max_memory
        )
        if cpu_held:
            notes.append(f"cpu held {cpu_held}")
        if mem_held:
            notes.append(f"memory held {mem_held}")
        if self.cpu.empty:
            notes.append("no cpu sample yet")
        if self.memory.empty:
            notes.append("no memory sample yet")
        return VerticalRecommendation(
            v.mode,
            Resources(cpus[1], mems[1], 0),
            Resources(cpus[0], mems[0], 0),
            Resources(cpus[2], mems[2], 0),
            "; ".join(notes),
        )


def _bound(values: list[int], floor: int, lo: int, hi: int) -> tuple[list[int], str]:
    """``values`` within ``max(floor, lo)``..``hi`` (0: none), and which bound held the
    target ("" none)."""
    least = max(floor, lo)
    out = [max(least, v) for v in values]
    if hi:
        out = [min(hi, v) for v in out]
    target = values[1]
    if hi and target > hi:
        return out, "at max"
    if lo and target < lo:
        return out, "at min"
    return out, ""

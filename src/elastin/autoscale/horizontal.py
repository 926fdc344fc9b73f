"""The horizontal autoscaler: how many replicas a service should run, and why.

``decide(policy, current, observations, history, now)`` is a pure function: from the
service's ``Autoscale`` policy, its current replica count, what its replicas measure (with
their readiness), the history of earlier recommendations and scale events, and the time, it
returns a ``Decision``: the desired count, each metric's proposal with the values it used, the
bounds, what limited the change (``limit``) and a ``reason`` fit for an event. The history to
pass next time is in the decision. The caller (``server/autoscaler.py``) evaluates every
``policy.interval`` seconds and turns a changed count into a plan like any other scale.

The semantics are Kubernetes' HPA v2 (docs/autoscaling.md says where they differ):

- per metric, ``desired = ceil(ready replicas × value / target)``, or no change while
  ``|value / target − 1| <= tolerance``; the largest proposal across metrics wins;
- replicas not ready (for ``cpu``, also those started less than ``startup_grace`` ago) are
  left out, and counted as using nothing when the others propose a scale-up;
- replicas without a value are counted as using nothing on a scale-up and as using their
  whole request (``cpu``, ``memory``) or the target (the others) on a scale-down; a proposal
  that these change in direction keeps the count;
- a metric without any value proposes nothing; no proposal at all, or a scale-down while some
  metric has none, keeps the count;
- the recommendation is stabilized (scale-up: the lowest of the last ``scale_up``
  window; scale-down: the highest of the last ``scale_down`` window), then bounded by the rate
  policies (pods or percent per period, ``select`` max, min or disabled) and ``min``..``max``;
- ``min: 0``: the last replica goes after ``idle_after`` seconds without a request (an input,
  ``Observations.idle_for``), and a held request brings one back at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from elastin.model.resources import Resources
from elastin.model.workload import Autoscale, MetricTarget, ScalingRules

Limit = Literal[
    "",  # nothing limited the recommendation
    "off",  # no horizontal metrics
    "paused",  # zero replicas while min > 0 (as HPA: someone scaled it to zero)
    "below-min",  # the count was under min: brought to it
    "above-max",  # the count was over max: brought to it
    "min",  # the recommendation was under the lower bound
    "max",  # the recommendation was over max
    "no-metrics",  # no metric had a value
    "partial-metrics",  # a scale-down while some metric had no value
    "scale-up-stabilization",
    "scale-down-stabilization",
    "scale-up-policy",
    "scale-down-policy",
    "scale-up-disabled",
    "scale-down-disabled",
    "idle",  # min 0 and no request for idle_after: to zero
    "held-request",  # zero replicas and a request held: to one
]

EPSILON = 1e-9  # ceil(2.0000000001) is 3: float noise must not add a replica


@dataclass(frozen=True)
class ReplicaObservation:
    """What one replica measures. ``None``: no value (not reported, or not yet)."""

    id: str
    ready: bool = True  # running, and healthy when the service has a check
    started_at: float = 0.0
    cpu: float | None = None  # millicores in use
    memory: int | None = None  # bytes in use
    rps: float | None = None  # requests per second it served
    inflight: float | None = None  # requests in flight
    gauges: tuple[tuple[str, float], ...] = ()  # application gauges from its endpoint

    def value(self, metric: MetricTarget, request: Resources) -> float | None:
        """This replica's value of ``metric`` in the target's unit (utilisation as a
        fraction of the request for ``cpu`` and ``memory``); None without one."""
        if metric.kind == "cpu":
            return None if self.cpu is None or request.cpu <= 0 else self.cpu / request.cpu
        if metric.kind == "memory":
            if self.memory is None or request.memory <= 0:
                return None
            return self.memory / request.memory
        if metric.kind == "rps":
            return self.rps
        if metric.kind == "inflight":
            return self.inflight
        return next((v for name, v in self.gauges if name == metric.name), None)


@dataclass(frozen=True)
class Observations:
    """A service's measurements at one evaluation."""

    replicas: tuple[ReplicaObservation, ...] = ()
    request: Resources = field(default_factory=Resources)  # per replica
    p99: float | None = None  # the service's p99 latency, seconds
    idle_for: float = 0.0  # seconds without a request and with none in flight
    held: int = 0  # requests the mesh holds waiting for a replica (scale from zero)


@dataclass(frozen=True)
class Recommendation:
    at: float
    replicas: int


@dataclass(frozen=True)
class ScaleEvent:
    at: float
    change: int  # replicas added (> 0) or removed (< 0)


@dataclass(frozen=True)
class History:
    """What ``decide`` remembers between evaluations: the recommendations of the longest
    stabilization window and the scale events of the longest policy period."""

    recommendations: tuple[Recommendation, ...] = ()
    events: tuple[ScaleEvent, ...] = ()


@dataclass(frozen=True)
class Proposal:
    """One metric's proposal: the value it used and the replicas it asks for (None: the
    metric had no value); ``note`` says what was left out or assumed."""

    metric: MetricTarget
    value: float | None
    replicas: int | None
    note: str = ""

    def describe(self) -> str:
        target = _show(self.metric, self.metric.target)
        if self.value is None:
            return f"{self.metric.label}: no value (target {target})"
        text = f"{self.metric.label} {_show(self.metric, self.value)} (target {target})"
        text += f" → {self.replicas}"
        return text + (f" [{self.note}]" if self.note else "")


@dataclass(frozen=True)
class Decision:
    current: int
    desired: int
    recommended: int  # the largest proposal, before stabilization, policies and bounds
    proposals: tuple[Proposal, ...]
    min: int
    max: int
    limit: Limit
    reason: str
    history: History

    @property
    def changed(self) -> bool:
        return self.desired != self.current


def _show(metric: MetricTarget, value: float) -> str:
    if metric.kind in ("cpu", "memory"):
        return f"{value * 100:.0f}%"
    if metric.kind == "p99":
        return f"{value * 1000:.0f}ms"
    if metric.kind == "rps":
        return f"{value:.4g}/s"
    return f"{value:.4g}"


def _ceil(x: float) -> int:
    return max(0, math.ceil(x - EPSILON))


def _proposal(
    metric: MetricTarget, policy: Autoscale, current: int, obs: Observations, now: float
) -> Proposal:
    """HPA's replica calculator for one metric."""
    tolerance = policy.tolerance
    if metric.kind == "p99":  # one value for the service (HPA's object metric)
        ready = sum(1 for r in obs.replicas if r.ready)
        if obs.p99 is None or ready == 0:
            return Proposal(metric, obs.p99, None, "no ready replica" if ready == 0 else "")
        ratio = obs.p99 / metric.target
        if abs(1.0 - ratio) <= tolerance:
            return Proposal(metric, obs.p99, current, "within tolerance")
        return Proposal(metric, obs.p99, _ceil(ratio * ready))
    values: list[float] = []
    unready = missing = 0
    for r in obs.replicas:
        warming = metric.kind == "cpu" and now - r.started_at < policy.startup_grace
        if not r.ready or warming:
            unready += 1
            continue
        v = r.value(metric, obs.request)
        if v is None:
            missing += 1
        else:
            values.append(v)
    if not values:
        note = f"{unready} not ready" if unready else ""
        return Proposal(metric, None, None, note)
    average = sum(values) / len(values)
    ratio = average / metric.target
    up_with_unready = unready > 0 and ratio > 1.0
    if not up_with_unready and missing == 0:
        left_out = f"{unready} not ready left out" if unready else ""
        if abs(1.0 - ratio) <= tolerance:
            return Proposal(metric, average, current, _join("within tolerance", left_out))
        return Proposal(metric, average, _ceil(ratio * len(values)), left_out)
    counted = list(values)
    notes = []
    if missing and ratio < 1.0:
        # on a scale-down, a replica without a value is assumed busy: its whole request
        # (HPA: 100%, or the target when that is higher), or the target
        full = max(1.0, metric.target) if metric.kind in ("cpu", "memory") else metric.target
        counted += [full] * missing
        notes.append(f"{missing} without a value counted as {_show(metric, full)}")
    elif missing and ratio > 1.0:
        counted += [0.0] * missing
        notes.append(f"{missing} without a value counted as 0")
    if up_with_unready:
        counted += [0.0] * unready
        notes.append(f"{unready} not ready counted as 0")
    elif unready:
        notes.append(f"{unready} not ready left out")
    new_ratio = sum(counted) / len(counted) / metric.target
    note = "; ".join(notes)
    if abs(1.0 - new_ratio) <= tolerance or (ratio < 1.0 < new_ratio) or (new_ratio < 1.0 < ratio):
        return Proposal(metric, average, current, _join("within tolerance once assumed", note))
    proposed = _ceil(new_ratio * len(counted))
    if (new_ratio < 1.0 and proposed > current) or (new_ratio > 1.0 and proposed < current):
        return Proposal(metric, average, current, _join("direction changed once assumed", note))
    return Proposal(metric, average, proposed, note)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _prune(history: History, policy: Autoscale, now: float) -> History:
    b = policy.behavior
    window = max(b.scale_up.stabilization_window, b.scale_down.stabilization_window)
    period = max((p.period for r in (b.scale_up, b.scale_down) for p in r.policies), default=0.0)
    return History(
        tuple(r for r in history.recommendations if r.at > now - window),
        tuple(e for e in history.events if e.at > now - period),
    )


def _stabilize(
    recommended: int, current: int, history: History, policy: Autoscale, now: float
) -> tuple[int, Limit]:
    """HPA's stabilization: not above the lowest recommendation of the scale-up window, not
    below the highest of the scale-down window (the current count in between)."""
    b = policy.behavior
    up_cut = now - b.scale_up.stabilization_window
    down_cut = now - b.scale_down.stabilization_window
    up, down = recommended, recommended
    for r in history.recommendations:
        if r.at > up_cut:
            up = min(up, r.replicas)
        if r.at > down_cut:
            down = max(down, r.replicas)
    stabilized = min(max(current, up), down)
    if stabilized == recommended:
        return stabilized, ""
    return stabilized, "scale-up-stabilization" if stabilized == up else "scale-down-stabilization"


def _changed_within(events: tuple[ScaleEvent, ...], period: float, now: float) -> tuple[int, int]:
    """Replicas added and removed in the last ``period`` seconds."""
    recent = [e.change for e in events if e.at > now - period]
    return sum(c for c in recent if c > 0), -sum(c for c in recent if c < 0)


def _up_limit(current: int, events: tuple[ScaleEvent, ...], rules: ScalingRules, now: float) -> int:
    proposals = []
    for p in rules.policies:
        added, removed = _changed_within(events, p.period, now)
        start = current - added + removed
        if p.type == "pods":
            proposals.append(start + p.value)
        else:  # rounded up, or a small count could never grow
            proposals.append(_ceil(start * (1 + p.value / 100)))
    if not proposals:
        return current
    return min(proposals) if rules.select == "min" else max(proposals)


def _down_limit(
    current: int, events: tuple[ScaleEvent, ...], rules: ScalingRules, now: float
) -> int:
    proposals = []
    for p in rules.policies:
        added, removed = _changed_within(events, p.period, now)
        start = current - added + removed
        if p.type == "pods":
            proposals.append(start - p.value)
        else:
            proposals.append(math.floor(start * (1 - p.value / 100) + EPSILON))
    if not proposals:
        return current
    return max(proposals) if rules.select == "min" else min(proposals)


def _rate(
    desired: int, current: int, history: History, policy: Autoscale, lo: int, now: float
) -> tuple[int, Limit]:
    """HPA's rate policies and the bounds: the change allowed now."""
    b, hi = policy.behavior, policy.max
    code: Limit
    if desired > current:
        if b.scale_up.select == "disabled":
            limit, code = current, "scale-up-disabled"
        else:
            limit = max(current, _up_limit(current, history.events, b.scale_up, now))
            code = "scale-up-policy"
        if hi <= limit:
            limit, code = hi, "max"
        if desired > limit:
            return limit, code
    elif desired < current:
        if b.scale_down.select == "disabled":
            limit, code = current, "scale-down-disabled"
        else:
            limit = min(current, _down_limit(current, history.events, b.scale_down, now))
            code = "scale-down-policy"
        if lo >= limit:
            limit, code = lo, "min"
        if desired < limit:
            return limit, code
    return desired, ""


LIMITS: dict[str, str] = {
    "": "",
    "off": "no horizontal metrics",
    "paused": "0 replicas with min above 0: autoscaling is paused until the service is scaled",
    "below-min": "the count was below min",
    "above-max": "the count was above max",
    "min": "held at the lower bound",
    "max": "held at max",
    "no-metrics": "no metric has a value: the count stays",
    "partial-metrics": "a metric has no value: no scale-down on part of the picture",
    "scale-up-stabilization": "stabilized: the lowest recommendation of the scale-up window",
    "scale-down-stabilization": "stabilized: the highest recommendation of the scale-down window",
    "scale-up-policy": "limited by the scale-up policy",
    "scale-down-policy": "limited by the scale-down policy",
    "scale-up-disabled": "scale-up is disabled",
    "scale-down-disabled": "scale-down is disabled",
    "idle": "no request for the idle period: scale to zero",
    "held-request": "a request is held: one replica starts",
}


def _policy_text(rules: ScalingRules, sign: str) -> str:
    parts = [
        f"{sign}{p.value}{'%' if p.type == 'percent' else ''} per {p.period:g}s"
        for p in rules.policies
    ]
    return f"{rules.select} of {', '.join(parts)}" if parts else rules.select


def _reason(
    current: int,
    desired: int,
    proposals: tuple[Proposal, ...],
    lo: int,
    policy: Autoscale,
    limit: Limit,
    extra: str = "",
) -> str:
    verb = "scale up" if desired > current else "scale down" if desired < current else "keep"
    head = f"{verb} {current} → {desired}" if desired != current else f"keep {current}"
    parts = [head]
    if proposals:
        parts.append(", ".join(p.describe() for p in proposals))
    why = extra or LIMITS[limit]
    if limit == "scale-up-policy":
        why += f" ({_policy_text(policy.behavior.scale_up, '+')})"
    elif limit == "scale-down-policy":
        why += f" ({_policy_text(policy.behavior.scale_down, '-')})"
    elif limit in ("scale-up-stabilization", "scale-down-stabilization"):
        rules = (
            policy.behavior.scale_up if limit.startswith("scale-up") else policy.behavior.scale_down
        )
        why += f" of {rules.stabilization_window:g}s"
    if why:
        parts.append(why)
    parts.append(
        f"bounds {lo}..{policy.max}"
        if lo == policy.min
        else f"bounds {policy.min}..{policy.max} ({lo} until idle)"
    )
    return "; ".join(parts)


def decide(
    policy: Autoscale, current: int, obs: Observations, history: History, now: float
) -> Decision:
    """The replicas ``policy`` asks for now (see the module)."""
    history = _prune(history, policy, now)
    lo, hi = policy.min, policy.max

    def done(
        desired: int,
        limit: Limit,
        proposals: tuple[Proposal, ...] = (),
        recommended: int | None = None,
        hist: History = history,
        extra: str = "",
        floor: int = lo,
    ) -> Decision:
        if desired != current:
            hist = History(hist.recommendations, (*hist.events, ScaleEvent(now, desired - current)))
        text = _reason(current, desired, proposals, floor, policy, limit, extra)
        rec = desired if recommended is None else recommended
        return Decision(current, desired, rec, proposals, lo, hi, limit, text, hist)

    if not policy.horizontal:
        return done(current, "off")
    if current == 0:
        if lo > 0:
            return done(0, "paused")
        if obs.held > 0:
            return done(1, "held-request", extra=f"{obs.held} request(s) held: one replica starts")
        return done(0, "", extra="scaled to zero: the next request starts a replica")
    if current > hi:
        return done(hi, "above-max")
    if current < lo:
        return done(lo, "below-min")
    if lo == 0 and obs.held == 0 and obs.idle_for > 0 and obs.idle_for >= policy.idle_after:
        return done(
            0,
            "idle",
            extra=f"no request for {obs.idle_for:g}s (idle_after {policy.idle_after:g}s): "
            "scale to zero",
        )
    floor = max(lo, 1)  # min 0: the last replica goes only when idle (above)
    proposals = tuple(_proposal(m, policy, current, obs, now) for m in policy.metrics)
    valid = [p.replicas for p in proposals if p.replicas is not None]
    if not valid:
        return done(current, "no-metrics", proposals, current, floor=floor)
    recommended = max(valid)
    if len(valid) < len(proposals) and recommended < current:
        return done(current, "partial-metrics", proposals, recommended, floor=floor)
    stabilized, stab = _stabilize(recommended, current, history, policy, now)
    hist = History((*history.recommendations, Recommendation(now, recommended)), history.events)
    desired, rate = _rate(stabilized, current, hist, policy, floor, now)
    limit: Limit = rate or stab
    if desired == floor and limit == "min" and lo == 0:
        extra = (
            f"min 0: the last replica goes after {policy.idle_after:g}s without a request "
            f"(none for {obs.idle_for:g}s)"
        )
        return done(desired, limit, proposals, recommended, hist, extra, floor)
    return done(desired, limit, proposals, recommended, hist, floor=floor)

"""The server's horizontal autoscaler loop: thin I/O around the pure
``elastin.autoscale.horizontal.decide`` (docs/autoscaling.md).

Every ``policy.interval`` (1 s by default) for each service whose spec has horizontal
``autoscale:`` (not stopped), the loop

1. builds ``Observations`` (``observations``, pure) from the service's live allocations in
   the store (a replica is ready when it runs and is ready — healthy when checked) and the
   one-second metric windows (``Telemetry.windows``, memory only): per replica cpu
   (millicores, against the request's millicores), memory (bytes), requests per second and
   requests in flight, the application gauges the node's agent read from the replica's
   own Prometheus endpoint (``agent/gauges.py``; a gauge it could not read is missing, which
   ``decide`` treats conservatively), and the service's p99 (``service_p99``: from the
   proxies' latency histograms, which they keep for a service with a ``p99`` metric; without
   one — an agent of an older version — the longest response of the last second stands in
   for it, an upper bound, and the decision says so);
2. calls ``decide`` with the service's ``History`` (kept here, in memory: a restarted server
   starts with an empty one, as HPA's controller does);
3. when the desired count differs, scales through ``Apps.autoscale`` — the same
   compare-and-set on the application's record as ``elastin scale``, so that the applier's
   plan, placement and rollout rules hold — with a ``service.autoscaled`` event: the
   decision's ``reason`` as its message and the structured values (metric values,
   proposals, bounds, what limited it) as its ``data``. When a limit held a change back (a
   stabilization window, a rate policy, a bound, missing metrics), a
   ``service.autoscale_held`` event says so, rate-limited (``HeldEvents``).

Scale to zero (``min: 0``; docs/autoscaling.md): the loop passes ``decide`` how long the
service has been idle (``idle_for``: seconds since it last had a request, or one in flight,
in the windows; ``last_active``, pure — counted only while a replica is ready, and from the
server's start) and how many requests the mesh holds for it (``held``: the agents' wakes,
``POST /v1/nodes/{id}/wake`` → ``held_requests``, memory only, counted for ``HELD_TTL``
seconds). The wake route takes a wake only from a registered node and only for a port that
holds requests in the current mesh version (``MeshFeed.wakeable``). The first wake for a
service at zero replicas wakes the loop at once: it is evaluated then, not at its next
interval, and goes to one; the wakes the agents repeat while requests wait only refresh the
count.

A service in the middle of a rollout is not scaled (HPA scales the Deployment, whose rollout
goes on; here the replica count is held until the version is stable), and a
``service.autoscale_held`` event says so. There is one server, so there is no leader to
elect: the loop runs in it. ``status`` serves the last decision per service to the API
(``GET /v1/services``: ``autoscale``) and ``elastin ps``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from elastin.autoscale.horizontal import (
    Decision,
    History,
    Observations,
    ReplicaObservation,
    decide,
)
from elastin.clock import SYSTEM, Clock
from elastin.model.cluster import Allocation
from elastin.model.rollout import current as current_revision
from elastin.model.workload import Autoscale, Workload
from elastin.server.apps import Apps
from elastin.server.errors import ServerError
from elastin.server.repo import AppRecord, Repo
from elastin.server.telemetry import Telemetry
from elastin.server.windows import NodeReport

log = logging.getLogger("elastin.server.autoscaler")

TICK = 1.0  # the loop's longest sleep; a service with a shorter interval makes it shorter
EVERY = ("", "")  # in the burst set: an early report that names no port (every service)
EARLY = 0.3  # a pass may come this much (at most this share of the interval) before its
# interval is over, to follow a metrics report that has just arrived
MIN_TICK = 0.1  # the shortest interval a spec may set
HELD_EVERY = 10.0  # at most one held event per service this often
HELD_REPEAT = 300.0  # the same held event again after this long
HELD_TTL = 5.0  # seconds a wake counts (agents repeat it every second while requests wait)
HELD_MOST = 10_000  # services with held requests remembered at most
# said of a p99 that is not measured: no proxy keeps a latency histogram for the service
# (an agent of an older version), so the longest response stands in for it
P99_NOTE = (
    "p99 is not measured: the value is the longest response of the last second, an upper "
    "bound of p99"
)
P99_MEASURED = "p99_response_ms"  # the windows' metric of a measured p99
P99_BOUND = "max_response_ms"  # what stands in for it


def service_p99(metrics: Mapping[str, Any]) -> tuple[float | None, bool]:
    """The service's p99 latency in seconds from ``Windows.service``'s current values, and
    whether it is measured (the proxies' latency histograms, ``p99_response_ms``). Without
    a histogram (an agent of an older version), the longest response of the last second, an
    upper bound of it (``P99_NOTE``); None: neither (no request)."""
    total = metrics.get("total", {}) if metrics else {}
    p99 = _float(_current(total.get(P99_MEASURED)))
    if p99 is not None:
        return p99 / 1000.0, True
    longest = _float(_current(total.get(P99_BOUND)))
    return (None if longest is None else longest / 1000.0), False


# --- pure parts -----------------------------------------------------------------------------


def _current(metric: Any) -> Any:
    """A windows metric ``{"current", "series"}`` → its current value (None: not measured)."""
    return metric.get("current") if isinstance(metric, Mapping) else None


def observations(
    w: Workload, allocs: list[Allocation], metrics: Mapping[str, Any], shift: float = 0.0
) -> Observations:
    """What ``decide`` reads for service ``w`` (pure): one ``ReplicaObservation`` per live
    allocation of its (``desired == run``, not terminal), ready when running and ready (its
    ``ready_at``; healthy when checked), its start the time it became ready — a stored wall
    clock timestamp, plus ``shift`` (the loop passes monotonic − wall, so that ``decide``
    compares it with its monotonic ``now``); its values from
    ``metrics`` (``Windows.service(app, name, 1)``): cpu millicores, memory bytes, requests
    per second and in flight (plus a share of what waits in a proxy's queue, on no replica
    yet: ``_with_backlog``), and its application gauges (those with a current value); None
    (or no gauge) where the windows have none. ``p99``: the service's p99 in seconds
    (``service_p99``: measured, or the longest response as its upper bound)."""
    replicas = metrics.get("replicas", {}) if metrics else {}
    out = []
    for a in allocs:
        if a.terminal or a.desired != "run":
            continue
        r = replicas.get(a.id, {})
        cpu, mem = _current(r.get("cpu")), _current(r.get("memory"))
        out.append(
            ReplicaObservation(
                id=a.id,
                ready=a.status == "running" and a.ready_at > 0,
                started_at=(a.ready_at or a.created_at) + shift,
                cpu=None if cpu is None else float(cpu),
                memory=None if mem is None else int(mem),
                rps=_float(_current(r.get("requests_per_s"))),
                inflight=_float(_current(r.get("in_flight"))),
                gauges=_gauges(r.get("gauges")),
            )
        )
    total = metrics.get("total", {}) if metrics else {}
    queued = _with_backlog(out, _float(_current(total.get("in_flight"))), "inflight")
    if queued != out:  # requests wait on no replica: what arrived beyond theirs waits too
        queued = _with_backlog(queued, _float(_current(total.get("requests_per_s"))), "rps")
    out = queued
    return Observations(replicas=tuple(out), request=w.resources, p99=service_p99(metrics)[0])


def _with_backlog(
    replicas: list[ReplicaObservation], total: float | None, attr: str
) -> list[ReplicaObservation]:
    """``replicas`` with the service's ``total`` (requests per second, or in flight) beyond
    the sum of their own values spread evenly over the ready ones that have a value (pure).

    That share is on no endpoint yet: requests waiting in a proxy's queue for a free
    connection (``mesh.max_connections``) arrived and wait, but no replica holds them. Left
    out, a saturated service would look as loaded as what its replicas take, and a scale-up
    would be sized for that rather than for the load asked of it. The request rate is
    spread only while requests wait (``observations``): otherwise what arrived beyond the
    replicas' share is what the mesh answered itself (a rate limit's 429, a 503), which
    more replicas would not serve."""
    if total is None:
        return replicas
    share = {r.id for r in replicas if r.ready and getattr(r, attr) is not None}
    extra = total - sum(getattr(r, attr) or 0.0 for r in replicas)
    if not share or extra <= 0:
        return replicas
    add = extra / len(share)
    return [replace(r, **{attr: getattr(r, attr) + add}) if r.id in share else r for r in replicas]


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def _gauges(metrics: Any) -> tuple[tuple[str, float], ...]:
    """A replica's windows ``gauges`` (name -> ``{"current", "series"}``) → the current
    values, by name; a gauge without a current value is left out (missing)."""
    if not isinstance(metrics, Mapping):
        return ()
    return tuple(
        (name, float(v)) for name, m in sorted(metrics.items()) if (v := _current(m)) is not None
    )


def last_active(previous: float | None, metrics: Mapping[str, Any], now: float) -> float:
    """When the service was last active, seen at ``now`` (pure): ``now`` when any second of
    ``metrics`` (``Windows.service`` over the seconds since the last evaluation) had a
    request, a request in flight, or no measurement at all (a node that did not report, a
    port without a rate yet: idleness is measured, never assumed); else ``previous`` (the
    first time: ``now``)."""
    total = metrics.get("total", {}) if metrics else {}
    rates = total.get("requests_per_s", {}).get("series") or [None]
    in_flight = total.get("in_flight", {}).get("series") or [None]
    for rate, busy in zip(rates, in_flight, strict=False):
        if rate is None or busy is None or rate > 0 or busy > 0:
            return now
    return now if previous is None else previous


def decision_data(
    d: Decision, policy: Autoscale, obs: Observations, p99_measured: bool = False
) -> dict[str, Any]:
    """The structured values of a decision (an event's ``data``, the API's ``autoscale``):
    per metric its value, target and proposal; the counts, bounds and what limited it. A
    ``p99`` metric says where its value comes from (``source``) and, when it is not
    ``p99_measured``, that it is an upper bound (``P99_NOTE``)."""
    values = []
    for p in d.proposals:
        m = p.metric
        item: dict[str, Any] = {
            "metric": m.label,
            "kind": m.kind,
            "target": m.target,
            "value": p.value,
            "proposal": p.replicas,
            "note": p.note,
        }
        if m.kind == "p99" and p99_measured:
            item["source"] = P99_MEASURED
        elif m.kind == "p99":
            item["source"] = P99_BOUND
            item["note"] = "; ".join(x for x in (p.note, P99_NOTE) if x)
        values.append(item)
    return {
        "current": d.current,
        "desired": d.desired,
        "recommended": d.recommended,
        "min": d.min,
        "max": d.max,
        "limit": d.limit,
        "reason": d.reason,
        "ready": sum(1 for r in obs.replicas if r.ready),
        "replicas": len(obs.replicas),
        "metrics": values,
    }


def explain(d: Decision, policy: Autoscale, p99_measured: bool = False) -> str:
    """The event's message: the decision's reason, and the p99 caveat when it used a p99
    that is not measured (the longest response stood in for it)."""
    if p99_measured:
        return d.reason
    if any(p.metric.kind == "p99" and p.value is not None for p in d.proposals):
        return f"{d.reason}; {P99_NOTE}"
    return d.reason


def held_back(d: Decision) -> bool:
    """Whether a limit held a change back (worth a rate-limited event): the count stays
    while the metrics asked for another, or while no (or not every) metric has a value."""
    if d.changed or d.limit in ("", "off"):
        return False
    return d.recommended != d.current or d.limit in ("no-metrics", "partial-metrics", "paused")


@dataclass
class HeldEvents:
    """Rate limit of ``service.autoscale_held`` events, per service: one when what held the
    count changed (at most every ``every`` seconds), the same one again after ``repeat``."""

    every: float = HELD_EVERY
    repeat: float = HELD_REPEAT
    _last: dict[str, tuple[float, tuple[Any, ...]]] = field(default_factory=dict)

    def due(self, service: str, key: tuple[Any, ...], now: float) -> bool:
        last = self._last.get(service)
        if last is not None:
            at, was = last
            if now - at < (self.repeat if was == key else self.every):
                return False
        self._last[service] = (now, key)
        return True

    def forget(self, service: str) -> None:
        self._last.pop(service, None)


# --- the loop -------------------------------------------------------------------------------


@dataclass
class _State:
    history: History = field(default_factory=History)
    next_at: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)
    active_at: float | None = None  # when it last had a request or one in flight
    evaluated_at: float | None = None


def early(interval: float) -> float:
    """The shortest time between two evaluations of a service with ``interval``: a pass
    that follows a fresh metrics report may come ``EARLY`` seconds (at most that share of
    the interval) before the interval is over."""
    return interval - min(EARLY, EARLY * interval)


def rolling(rec: AppRecord, w: Workload) -> bool:
    """Whether ``w``'s current version is still rolling out."""
    rev = current_revision(rec.history.get(w.name, ()), rec.versions.get(w.name, 0))
    return rev is not None and rev.state == "rolling"


class Autoscaler:
    def __init__(self, repo: Repo, apps: Apps, telemetry: Telemetry, clock: Clock = SYSTEM) -> None:
        self.repo = repo
        self.apps = apps
        self.telemetry = telemetry
        self.clock = clock
        self.held = HeldEvents()
        self._states: dict[str, _State] = {}
        # requests the mesh holds for a service scaled to zero:
        # app/service -> (count, when, whether it was at zero replicas then)
        self._held: dict[str, tuple[int, float, bool]] = {}
        self._kick = asyncio.Event()
        self._fresh = asyncio.Event()  # a metrics report arrived since the last pass
        # services whose load jumped (early reports) since the last pass: (app, service)
        self._burst: set[tuple[str, str]] = set()
        telemetry.on_report(self._report_arrived)

    def _report_arrived(self, report: NodeReport) -> None:
        """A metrics report was kept: the next pass may follow it (``_pause``); an early
        one — an agent saw the load of some ports jump before its interval was over —
        makes a pass at once that evaluates their services if their interval is at most
        ``TICK``, due or not (a scale-up waits for no tick; a longer interval is what its
        policy asked for)."""
        self._fresh.set()
        if report.early:  # an agent of an earlier version names no port: every service
            named = {(p.app, p.service) for p in report.jumped}
            self._burst.update(named or {EVERY})
            self._kick.set()

    def held_requests(self, app: str, service: str, count: int, at_zero: bool = True) -> None:
        """A node's proxy holds ``count`` requests for ``app/service`` (scaled to zero):
        remembered for ``HELD_TTL`` s. The loop is woken at once only when the service is
        ``at_zero`` replicas and its requests were not already known held there (the agents
        repeat a wake every second while requests wait: one pass is enough; a service on its
        way up or down is evaluated at its interval)."""
        key = f"{app}/{service}"
        now = self.clock.monotonic()
        was = self._held.get(key)
        known = was is not None and now - was[1] <= HELD_TTL and was[2]
        if was is None and len(self._held) >= HELD_MOST:
            self._held = {k: v for k, v in self._held.items() if now - v[1] <= HELD_TTL}
            if len(self._held) >= HELD_MOST:
                return  # no room: the next wake (in a second) tries again
        self._held[key] = (max(1, count), now, at_zero)
        if at_zero and not known:
            self._kick.set()

    def held_count(self, key: str) -> int:
        """Requests held for ``key`` (``app/service``) as last told, within ``HELD_TTL``."""
        held = self._held.get(key)
        if held is None:
            return 0
        if self.clock.monotonic() - held[1] > HELD_TTL:
            del self._held[key]
            return 0
        return held[0]

    def status(self, app: str, service: str) -> dict[str, Any] | None:
        """The last decision for ``app/service`` (None: none yet)."""
        s = self._states.get(f"{app}/{service}")
        return dict(s.status) if s is not None and s.status else None

    def view(self, app: str, w: Workload) -> dict[str, Any] | None:
        """What ``elastin ps`` and ``GET /v1/services`` show of ``w``'s autoscaling: the
        last decision (per metric its value and target, the bounds, what limited it), or
        before the first one the bounds and targets without values. None: not autoscaled."""
        policy = w.autoscale
        if w.type != "service" or policy is None or not policy.horizontal:
            return None
        last = self.status(app, w.name)
        if last is not None:
            return last
        return {
            "current": w.replicas,
            "desired": w.replicas,
            "recommended": w.replicas,
            "min": policy.min,
            "max": policy.max,
            "limit": "",
            "reason": "not evaluated yet",
            "ready": 0,
            "replicas": 0,
            "metrics": [
                {
                    "metric": m.label,
                    "kind": m.kind,
                    "target": m.target,
                    "value": None,
                    "proposal": None,
                    "note": "",
                }
                for m in policy.metrics
            ],
            "at": 0.0,
        }

    async def run(self) -> None:
        """Evaluate every service's policy at its interval, until cancelled."""
        while True:
            tick = TICK
            self._kick.clear()  # a wake from here on makes the next pass at once
            self._fresh.clear()
            started = self.clock.monotonic()
            try:
                tick = await self.evaluate_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a store hiccup: the next tick tries again
                log.exception("autoscaler pass failed")
            await self._pause(tick)
            if self._burst:  # many nodes' early reports: a pass at most every MIN_TICK
                await self.clock.sleep(max(0.0, started + MIN_TICK - self.clock.monotonic()))

    async def _pause(self, seconds: float) -> None:
        """Sleep until the next pass: at once on a held request's wake or an early report
        (the load jumped); else right after the first metrics report that arrives from
        ``early(seconds)`` on, or after ``seconds`` when none does. A pass then reads
        numbers a few milliseconds old, not up to an interval old (the loop's tick and the
        agents' reports are not in step)."""
        if self._kick.is_set():
            return
        start = self.clock.monotonic()
        if await self._wait((self._kick,), early(seconds)):
            return
        rest = seconds - (self.clock.monotonic() - start)
        if rest > 0:
            await self._wait((self._kick, self._fresh), rest)

    async def _wait(self, events: tuple[asyncio.Event, ...], seconds: float) -> bool:
        """Wait until one of ``events`` is set or ``seconds`` pass; whether one was set."""
        if any(e.is_set() for e in events):
            return True
        sleep = asyncio.ensure_future(self.clock.sleep(seconds))
        waits = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait((sleep, *waits), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (sleep, *waits):
                f.cancel()
        return any(e.is_set() for e in events)

    async def evaluate_once(self) -> float:
        """One pass: every autoscaled service whose interval is due. Returns how long to
        sleep before the next pass.

        Intervals, idleness, the decision history and the held events' rate limit run on the
        monotonic clock (a wall clock stepped back by NTP would stop evaluating; stepped
        forward it would find an idle service idle for too long); the wall clock only
        converts the store's timestamps (``ready_at``) and stamps the status (``at``)."""
        now = self.clock.monotonic()
        burst, self._burst = self._burst, set()
        records = await self.repo.list_apps()
        if not any(
            w.autoscale and w.autoscale.horizontal for r in records for w in r.app.workloads
        ):
            self._states.clear()
            return TICK
        allocs, _ = await self.repo.list_allocs()
        tick, seen = TICK, set()
        for rec in records:
            for w in rec.app.workloads:
                policy = w.autoscale
                if w.type != "service" or policy is None or not policy.horizontal:
                    continue
                key = f"{rec.app.name}/{w.name}"
                seen.add(key)
                tick = min(tick, max(MIN_TICK, policy.interval))
                state = self._states.setdefault(key, _State())
                # an early report (the load jumped) makes due the services that asked for
                # second-level decisions; a longer interval (HPA's 15 s) is kept as asked
                jumped = (rec.app.name, w.name) in burst or EVERY in burst
                woken = (jumped and policy.interval <= TICK) or (
                    w.replicas == 0 and policy.min == 0 and self.held_count(key) > 0
                )
                if w.name in rec.stopped or (now < state.next_at and not woken):
                    continue
                state.next_at = now + early(policy.interval)
                mine = [a for a in allocs if a.app == rec.app.name and a.workload == w.name]
                await self._evaluate(rec, w, policy, mine, state, now, self.clock.time())
        for key in set(self._states) - seen:  # deleted, or no longer autoscaled
            del self._states[key]
            self.held.forget(key)
        return tick

    async def _evaluate(
        self,
        rec: AppRecord,
        w: Workload,
        policy: Autoscale,
        allocs: list[Allocation],
        state: _State,
        now: float,
        wall: float,
    ) -> None:
        """Evaluate ``w`` at ``now`` (monotonic); ``wall``: the wall clock at the same moment."""
        key = f"{rec.app.name}/{w.name}"
        # the seconds since the last evaluation (for idleness); the current values are the
        # last second's
        since = now - state.evaluated_at if state.evaluated_at is not None else 1.0
        seconds = min(60, max(2, math.ceil(since) + 1))
        state.evaluated_at = now
        metrics = self.telemetry.windows.service(rec.app.name, w.name, seconds)
        obs = observations(w, allocs, metrics, shift=now - wall)
        held = self.held_count(key)
        if held or not any(r.ready for r in obs.replicas):
            state.active_at = now  # idle only counts while a replica is up and nothing waits
        else:
            state.active_at = last_active(state.active_at, metrics, now)
        obs = replace(obs, held=held, idle_for=now - state.active_at)
        d = decide(policy, w.replicas, obs, state.history, now)
        measured = service_p99(metrics)[1]
        data = decision_data(d, policy, obs, measured)
        message = explain(d, policy, measured)
        if d.changed and rolling(rec, w):
            # hold: the count moves once the version is stable; the history keeps the
            # recommendation (stabilization) but no scale event (nothing changed)
            state.history = History(d.history.recommendations, state.history.events)
            message = f"keep {w.replicas} while version {rec.versions.get(w.name, 0)} rolls out"
            message += f" (the metrics ask for {d.desired}): {d.reason}"
            data |= {"limit": "rollout", "desired": w.replicas, "asked": d.desired}
            state.status = {**data, "reason": message, "at": wall}
            if self.held.due(key, ("rollout", d.desired), now):
                await self._held_event(key, message, data)
            return
        state.status = {**data, "reason": message, "at": wall}
        if not d.changed:
            state.history = d.history
            if held_back(d) and self.held.due(key, (d.limit, d.desired, d.recommended), now):
                await self._held_event(key, message, data)
            return
        try:
            done = await self.apps.autoscale(key, w.replicas, d.desired, message, data)
        except ServerError as e:  # deleted or changed meanwhile: the next pass sees it
            log.info("autoscaling %s: %s", key, e.message)
            done = None
        if done is None:  # nothing written: keep the recommendation, not the scale event
            state.history = History(d.history.recommendations, state.history.events)
            return
        state.history = d.history
        self.held.forget(key)

    async def _held_event(self, key: str, message: str, data: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):  # an event that cannot be written is no failure
            await self.repo.record_events(
                [("service.autoscale_held", key, message, "info")], [data]
            )

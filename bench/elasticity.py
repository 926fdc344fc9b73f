"""Elasticity (issue #13's benchmark): how fast a service's replicas follow a load step, what
the step costs in failed requests, and the cold start from zero replicas.

A real ``elastin daemon`` (server and agent, a temporary data directory and a cgroup root of
its own, the node's HAProxy) runs a service ``api`` targeting 100 requests/s per replica
(``autoscale: {min: 1, max: 8, metrics: [{rps: 100}]}``) and a caller whose mesh listener
(``upstream.api``) the load goes through: every request crosses the node's HAProxy, which is
also what counts the requests the autoscaler follows. Each replica serves one request at a
time, 5 ms of work each (about 190 requests/s at most), so one replica cannot carry 500/s.

This script's load generator holds a fixed rate (open loop: request *n* is due at
``start + n / rate`` and its latency counts from then, so a slow service cannot slow the load
down), 50 requests/s, then a step to 500/s, then back to 50/s; it counts every failed
request (an error status, a broken connection, no answer within 10 s of when it was due).
Loopback only, and bounded in time and count. Meanwhile it polls the API every 0.25 s: the
replica count the autoscaler chose and the replicas ready (running and passing their health
check).

Rows, per system:

* ``reaction_s`` — from the step until the ready replicas are enough for the load
  (``ceil(500 / 100)`` = 5) and the p99 latency of the last second's requests is back under
  its target (``P99_TARGET_MS``); beside it ``decision_s`` (until the autoscaler's count
  reached 5) and ``ready_s`` (until 5 replicas were ready), where the time went;
* ``failed_requests`` — during the step up, the high load and the step down until the
  replicas are back to one (or the wait's bound);
* ``scale_down_s`` — from the step down until one replica is left (not measured when the
  wait's bound comes first; the notes say how long it waited);
* ``cold_start_s`` (``elastin`` only) — a service with ``min: 0`` left idle until it has no
  replica, then one request: the seconds until its answer, the held request included. Not
  measured (a note says why) when the service keeps a replica (scale to zero not wired).

``--cases step,cold_start`` picks what is measured (both by default), ``--max-connections``
sets the service's ``mesh.max_connections`` (a replica is given that many requests at once,
the others wait in the proxy's queue), ``--lb`` sets the service's mesh load balancing
(``least_request``; the mesh's default otherwise), ``--dump`` writes each system's timeline
(polls, each second's answered requests and p99, failures, the autoscaler's decisions).

Systems, in the same run, one after the other: ``elastin`` (the defaults: a decision every
second, a 60 s scale-down window) and ``hpa`` (HPA's defaults configured in Elastin:
``interval: 15s``, ``behavior: {scale_down: {stabilization_window: 5m}}``). Targets (issue
#13, docs/performance.md; the script never fails on them): ``reaction_s`` <= 2 s,
``failed_requests`` = 0, ``cold_start_s`` <= 1 s for a task.

``--plot`` draws the offered load, the replicas (chosen and ready) and the p99 over time for
both systems into ``bench/results/elasticity.png``; matplotlib is installed on demand from
PyPI into ``bench/.plot`` (not a project dependency). Needs root (tasks run in cgroups) and
HAProxy. Usage::

    python bench/elasticity.py [--json] [--runs N] [--quick] [--plot] [--systems elastin,hpa]
        [--cases step,cold_start] [--lb least_request] [--max-connections N] [--dump FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, document, elastin_process, emit, machine

HERE = Path(__file__).resolve().parent

BENCH = "elasticity"
LOW_RPS, HIGH_RPS = 50.0, 500.0
TARGET_RPS = 100  # per replica
MAX_REPLICAS = 8
NEEDED = math.ceil(HIGH_RPS / TARGET_RPS)  # replicas enough for the high load
P99_TARGET_MS = 100.0  # the latency the service is meant to keep (5 ms of work a request)
WORK_MS = 5.0
REQUEST_TIMEOUT = 10.0
# the load generator's bound on concurrent requests: 500/s for the 10 s a request may take
# (the file descriptor limit is raised to allow it, ``raise_fd_limit``)
MAX_CONNECTIONS = 6000
POLL = 0.25
PLOT_DIR = HERE / ".plot"
PNG = HERE / "results" / "elasticity.png"
SYSTEMS = ("elastin", "hpa")
CASES = ("step", "cold_start")


@dataclass(frozen=True)
class Phases:
    """How long each part of a system's run lasts, in seconds."""

    warm: float  # at LOW_RPS before the step
    high: float  # at HIGH_RPS
    down_max: float  # at LOW_RPS, waiting for one replica (bound)
    settle: float  # one replica for this long ends the wait


FULL = {
    "elastin": Phases(warm=15, high=45, down_max=150, settle=5),
    # HPA's 5 min down window plus a 15 s evaluation and the policy's 15 s periods
    "hpa": Phases(warm=15, high=60, down_max=400, settle=5),
}
QUICK = {
    "elastin": Phases(warm=5, high=15, down_max=10, settle=2),
    "hpa": Phases(warm=5, high=15, down_max=5, settle=2),
}

# The service: one request at a time (an asyncio lock around 5 ms of work), HTTP/1.1
# keep-alive, /healthz outside the lock; on SIGTERM it stops accepting and finishes what it
# holds (bounded), as a well-behaved service does.
SERVICE = """
import asyncio, os, signal
WORK = float(os.environ.get("WORK_MS", "5")) / 1000
lock = asyncio.Lock()
inflight = 0
async def handle(r, w):
    global inflight
    try:
        while True:
            line = await r.readline()
            if not line:
                break
            length = 0
            while True:
                h = await r.readline()
                if h in (b"\\r\\n", b"\\n", b""):
                    break
                if h.lower().startswith(b"content-length:"):
                    length = int(h.split(b":", 1)[1])
            if length:
                await r.readexactly(length)
            inflight += 1
            try:
                if b" /healthz" not in line:
                    async with lock:
                        await asyncio.sleep(WORK)
                w.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
                await w.drain()
            finally:
                inflight -= 1
    except (ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
        pass
    finally:
        w.close()
async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    s = await asyncio.start_server(handle, "127.0.0.1", int(os.environ["PORT"]), backlog=4096)
    await stop.wait()
    s.close()
    for _ in range(1000):
        if inflight == 0:
            break
        await asyncio.sleep(0.01)
asyncio.run(main())
"""


def spec(
    app: str, system: str, *, zero: bool = False, lb: str = "", max_connections: int = 0
) -> str:
    """The application of one row: ``api`` autoscaled on rps, and ``caller`` (a sleeping task
    whose mesh listener ``upstream.api`` the load generator uses). ``system`` ``hpa``
    configures HPA's defaults; ``zero`` makes ``api`` scale to zero after 2 s idle; ``lb`` sets
    the mesh's load balancing (the mesh's default, round robin, when empty);
    ``max_connections`` the requests each replica is given at once (``mesh.max_connections``;
    the others wait in the proxy's queue; unlimited when 0)."""
    mesh = ", ".join(
        f"{k}: {v}" for k, v in (("lb", lb), ("max_connections", max_connections)) if v
    )
    if zero:
        auto = f"{{min: 0, max: 2, idle_after: 2s, metrics: [{{rps: {TARGET_RPS}}}]}}"
    elif system == "hpa":
        auto = (
            f"{{min: 1, max: {MAX_REPLICAS}, metrics: [{{rps: {TARGET_RPS}}}], interval: 15s,"
            " behavior: {scale_down: {stabilization_window: 5m}}}"
        )
    else:
        auto = f"{{min: 1, max: {MAX_REPLICAS}, metrics: [{{rps: {TARGET_RPS}}}]}}"
    py = sys.executable
    return (
        f"app: {app}\nservices:\n  api:\n"
        f"    command: [{json.dumps(py)}, '-c', {json.dumps(SERVICE)}]\n"
        f"    env: {{WORK_MS: '{WORK_MS:g}'}}\n"
        "    ports: {http: 0}\n"
        "    resources: {cpu: 200m, memory: 48Mi}\n"
        "    health: {http: /healthz, interval: 1s, timeout: 1s}\n"
        + (f"    mesh: {{{mesh}}}\n" if mesh else "")
        + f"    autoscale: {auto}\n"
        "  caller:\n"
        "    command: [/bin/sleep, '3600']\n"
        "    upstreams: [api]\n"
        "    resources: {cpu: 10m, memory: 16Mi}\n"
    )


# -- measured samples and what they give (pure) ------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One request: when it was due (seconds from the run's start), its latency from then,
    and whether it succeeded."""

    due: float
    latency: float
    ok: bool
    error: str = ""  # a failure's kind: "status 503", "timeout", "connection reset", ...


@dataclass(frozen=True)
class Count:
    """One poll of the API: the autoscaler's count and the ready replicas."""

    t: float
    desired: int
    ready: int


@dataclass
class Timeline:
    """A system's run: requests, polls, the offered rate's changes and its marks."""

    samples: list[Sample] = field(default_factory=list)
    counts: list[Count] = field(default_factory=list)
    rates: list[tuple[float, float]] = field(default_factory=list)  # (since, req/s)
    step_up: float = 0.0
    step_down: float = 0.0
    end: float = 0.0
    stale_retries: int = 0
    # the autoscaler's decisions (``service.autoscaled`` events): (t, message, data)
    decisions: list[tuple[float, str, Any]] = field(default_factory=list)
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (t, type, subject)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def window_p99_ms(samples: Sequence[Sample], start: float, end: float) -> float | None:
    """p99 in ms of the requests due in ``[start, end)``, a failed one counting as infinitely
    slow; None when none was due."""
    lat = [s.latency * 1000 if s.ok else math.inf for s in samples if start <= s.due < end]
    return percentile(lat, 99) if lat else None


def first_count(counts: Sequence[Count], since: float, ok: Callable[[Count], bool]) -> float | None:
    """When (seconds from the run's start) the first poll at or after ``since`` met ``ok``."""
    return next((c.t for c in counts if c.t >= since and ok(c)), None)


def ready_at(counts: Sequence[Count], t: float) -> int:
    """The ready replicas the last poll at or before ``t`` saw (0 before the first)."""
    last = 0
    for c in counts:
        if c.t > t:
            break
        last = c.ready
    return last


def reaction(
    tl: Timeline, needed: int, target_ms: float, window: float = 1.0, step: float = 0.1
) -> float | None:
    """Seconds from the step up until ``needed`` replicas are ready and the p99 of the last
    ``window`` of requests is under ``target_ms``: the end of the first such window, both
    conditions holding at its end. None when that never happened before the step down."""
    t = tl.step_up + window
    while t <= tl.step_down + 1e-9:
        p99 = window_p99_ms(tl.samples, t - window, t)
        if ready_at(tl.counts, t) >= needed and p99 is not None and p99 <= target_ms:
            return t - tl.step_up
        t += step
    return None


def failures(samples: Sequence[Sample], start: float, end: float) -> int:
    return sum(1 for s in samples if start <= s.due < end and not s.ok)


def offered(rates: Sequence[tuple[float, float]], t: float) -> float:
    """The offered rate at ``t``: the last change at or before it."""
    rate = 0.0
    for since, r in rates:
        if since > t:
            break
        rate = r
    return rate


def per_second(tl: Timeline) -> list[tuple[float, float, float | None]]:
    """``(second, achieved req/s, p99 ms or None)`` for each whole second of the run, by
    due time; a p99 of a second with failures is infinite."""
    out: list[tuple[float, float, float | None]] = []
    for sec in range(int(tl.end) + 1):
        due = [s for s in tl.samples if sec <= s.due < sec + 1]
        done = sum(1 for s in due if s.ok)
        out.append((float(sec), float(done), window_p99_ms(due, sec, sec + 1)))
    return out


# -- the load generator (its own thread and event loop) -----------------------------------

REQUEST = b"GET / HTTP/1.1\r\nHost: api\r\nUser-Agent: elastin-bench\r\n\r\n"


class LoadGen:
    """A fixed-rate, open-loop HTTP/1.1 load on ``127.0.0.1:port`` (keep-alive connections,
    at most ``MAX_CONNECTIONS`` at once). ``set_rate`` changes the rate, ``stop`` ends it;
    every request is recorded in ``samples`` with its due time relative to ``t0``."""

    def __init__(self, port: int, t0: float, rate: float, max_requests: int) -> None:
        self.port = port
        self.t0 = t0
        self.rate = rate
        self.max_requests = max_requests
        self.samples: list[Sample] = []
        self.stale_retries = 0  # requests sent again after a kept-alive connection closed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="loadgen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def set_rate(self, rate: float) -> None:
        self.rate = rate  # read by the sender at its next request

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(REQUEST_TIMEOUT + 30)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        sem = asyncio.Semaphore(MAX_CONNECTIONS)
        tasks: set[asyncio.Task[None]] = set()

        async def one(due: float) -> None:
            error = "timeout"
            async with sem:
                for attempt in range(2):
                    conn = idle.pop() if idle and attempt == 0 else None
                    reused = conn is not None
                    try:
                        if conn is None:
                            conn = await asyncio.wait_for(
                                asyncio.open_connection("127.0.0.1", self.port), REQUEST_TIMEOUT
                            )
                        status, keep = await asyncio.wait_for(exchange(*conn), REQUEST_TIMEOUT)
                        error = "" if status == 200 else f"status {status}"
                        if keep:
                            idle.append(conn)
                            conn = None
                        break
                    except StaleConnection:
                        # a kept-alive connection the proxy closed before answering: sent
                        # again on a new one, as HTTP clients do (RFC 9110, 9.2.2)
                        error = "closed before an answer"
                        if reused:
                            self.stale_retries += 1
                            continue
                        break
                    except TimeoutError:
                        error = "timeout"
                        break
                    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                        error = type(e).__name__
                        break
                    finally:
                        if conn is not None:
                            conn[1].close()
            latency = time.monotonic() - self.t0 - due
            if not error and latency > REQUEST_TIMEOUT:
                # answered, but later than the timeout counts from when it was due (it waited
                # for one of the generator's connections first): open loop, a failure
                error = "timeout"
            self.samples.append(Sample(due, latency, not error, error))

        due = time.monotonic() - self.t0
        for _ in range(self.max_requests):  # bounded in count; stop() bounds it in time
            if self._stop.is_set():
                break
            delay = self.t0 + due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            due += 1.0 / self.rate
        if tasks:
            await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 20)
        for _, w in idle:
            w.close()


class StaleConnection(Exception):
    """The connection closed before any byte of an answer."""


async def exchange(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> tuple[int, bool]:
    """One request on a connection: ``(the answer's status, connection may be reused)``;
    ``StaleConnection`` when it closed before answering."""
    try:
        w.write(REQUEST)
        await w.drain()
        status = await r.readline()
    except ConnectionError as e:
        raise StaleConnection(str(e)) from e
    if not status:
        raise StaleConnection("closed before an answer")
    length, keep = 0, True
    while True:
        line = await r.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
        elif name.strip().lower() == "connection" and "close" in value.lower():
            keep = False
    if length:
        await r.readexactly(length)
    parts = status.split()
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), keep


# -- the daemon and one system's run -------------------------------------------------------


@contextlib.contextmanager
def daemon(tmp: Path) -> Iterator[Any]:
    """A real ``elastin daemon`` (server and agent) with its own data directory and cgroup
    root; stopped, with its workloads and cgroups, at the end."""
    from elastin.agent.drivers.cgroups import destroy_root
    from elastin.client.http import Client

    data = tmp / "data"
    env = {
        **os.environ,
        "ELASTIN_DATA_DIR": str(data),
        "ELASTIN_CGROUP_ROOT": f"elastin-bench-{secrets.token_hex(3)}",
    }
    env.pop("ELASTIN_ADDR", None)
    env.pop("ELASTIN_TOKEN", None)
    command = ("daemon", "--port", "0", "--stop-workloads")
    try:
        with elastin_process(command, data, env, tmp / "daemon.log", stop_wait=60) as (_, info):
            client = Client(info["url"], (data / "token").read_text().strip())
            wait_for(lambda: bool(client.nodes()), 30, "the agent to register")
            try:
                yield client
            finally:
                client.close()
    finally:
        destroy_root(env["ELASTIN_CGROUP_ROOT"])


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise SystemExit(f"gave up after {timeout:.0f} s waiting for {what}")


def count(client: Any, app: str) -> tuple[int, int]:
    """``(the autoscaler's count, ready replicas)`` of ``app``'s ``api``."""
    desired = next(
        (int(s["desired"]) for s in client.services() if s["app"] == app and s["name"] == "api"),
        0,
    )
    ready = sum(
        1
        for a in client.allocations(app=app, workload="api")
        if a.status == "running" and a.desired == "run" and a.healthy
    )
    return desired, ready


def listener(client: Any, app: str) -> int:
    """The caller's mesh listener for ``api`` (its ``upstream.api`` port)."""

    def port() -> int:
        for a in client.allocations(app=app, workload="caller"):
            if a.status == "running" and "upstream.api" in dict(a.ports):
                return int(dict(a.ports)["upstream.api"])
        return 0

    return int(wait_for(port, 60, f"{app}'s caller to run with its mesh listener"))


def get_once(port: int, timeout: float = REQUEST_TIMEOUT) -> bool:
    async def go() -> bool:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        try:
            status, _ = await asyncio.wait_for(exchange(r, w), timeout)
            return status == 200
        finally:
            w.close()

    try:
        return asyncio.run(go())
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, StaleConnection):
        return False


def raise_fd_limit(want: int) -> None:
    """Raise this process's soft limit of open files towards ``want`` (its hard limit at
    most): the load generator holds one connection per request in flight."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def log(msg: str) -> None:
    print(f"elasticity: {msg}", file=sys.stderr, flush=True)


def run_system(
    client: Any, system: str, phases: Phases, run: int, lb: str = "", max_connections: int = 0
) -> Timeline:
    """One system's step: warm at 50/s, 500/s, back to 50/s until one replica is left."""
    app = f"el-{system}-{run}"
    client.apply(spec(app, system, lb=lb, max_connections=max_connections), file=f"{app}.yaml")
    port = listener(client, app)
    wait_for(lambda: count(client, app)[1] >= 1, 60, f"{app}'s api to be ready")
    wait_for(lambda: get_once(port), 30, f"a request through {app}'s mesh listener")
    # the autoscaler holds the count while a version rolls out (until its instances have
    # been ready for min_healthy_time): the step starts from a proven version
    wait_for(
        lambda: client.rollout(f"{app}/api")["state"] == "stable", 60, f"{app}'s api to be stable"
    )
    tl = Timeline()
    t0 = time.monotonic()
    wall0 = time.time()
    bound = phases.warm + phases.high + phases.down_max + 5
    gen = LoadGen(port, t0, LOW_RPS, max_requests=int(HIGH_RPS * bound) + 1)

    def now() -> float:
        return time.monotonic() - t0

    def poll_until(until: Callable[[float], bool]) -> None:
        while not until(now()):
            d, r = count(client, app)
            tl.counts.append(Count(now(), d, r))
            time.sleep(POLL)

    tl.rates.append((0.0, LOW_RPS))
    gen.start()
    try:
        poll_until(lambda t: t >= phases.warm)
        tl.step_up = now()
        gen.set_rate(HIGH_RPS)
        tl.rates.append((tl.step_up, HIGH_RPS))
        log(f"{system}: step to {HIGH_RPS:.0f} req/s")
        poll_until(lambda t: t >= tl.step_up + phases.high)
        tl.step_down = now()
        gen.set_rate(LOW_RPS)
        tl.rates.append((tl.step_down, LOW_RPS))
        peak = max((c.ready for c in tl.counts), default=0)
        log(f"{system}: step down to {LOW_RPS:.0f} req/s ({peak} replicas ready at most)")

        def settled(t: float) -> bool:
            if t >= tl.step_down + phases.down_max:
                return True
            one = [c for c in tl.counts if c.t >= t - phases.settle]
            return (
                t - tl.step_down >= phases.settle
                and bool(one)
                and all(c.ready == 1 and c.desired == 1 for c in one)
            )

        poll_until(settled)
    finally:
        gen.stop()
    tl.end = now()
    tl.samples = sorted(gen.samples, key=lambda s: s.due)
    tl.stale_retries = gen.stale_retries
    events = client.events(limit=1000, service=f"{app}/api")
    tl.decisions = [
        (e["time"] - wall0, e["message"], e.get("data"))
        for e in events
        if e.get("type") == "service.autoscaled"
    ]
    tl.events = [(e["time"] - wall0, e["type"], e["subject"]) for e in events]
    client.delete_app(app)
    wait_for(lambda: all(a.terminal for a in client.allocations(app=app)), 60, f"{app} to stop")
    return tl


@dataclass
class Measured:
    """One system's figures of one run (None: not measured) and the notes on them."""

    reaction_s: float | None
    decision_s: float | None
    ready_s: float | None
    failed_requests: int
    scale_down_s: float | None
    waited_down_s: float
    peak_ready: int
    requests: int
    errors: dict[str, int]  # failed requests by kind, from the step up on
    failed_after_down: int  # of them, due after the step down
    stale_retries: int


def measure(tl: Timeline) -> Measured:
    enough_desired = first_count(tl.counts, tl.step_up, lambda c: c.desired >= NEEDED)
    enough_ready = first_count(tl.counts, tl.step_up, lambda c: c.ready >= NEEDED)
    one = first_count(tl.counts, tl.step_down, lambda c: c.ready == 1 and c.desired == 1)
    return Measured(
        reaction_s=reaction(tl, NEEDED, P99_TARGET_MS),
        decision_s=None if enough_desired is None else enough_desired - tl.step_up,
        ready_s=None if enough_ready is None else enough_ready - tl.step_up,
        failed_requests=failures(tl.samples, tl.step_up, tl.end + 1),
        scale_down_s=None if one is None else one - tl.step_down,
        waited_down_s=tl.end - tl.step_down,
        peak_ready=max((c.ready for c in tl.counts), default=0),
        requests=len(tl.samples),
        errors=error_kinds(tl.samples, tl.step_up, tl.end + 1),
        failed_after_down=failures(tl.samples, tl.step_down, tl.end + 1),
        stale_retries=tl.stale_retries,
    )


def error_kinds(samples: Sequence[Sample], start: float, end: float) -> dict[str, int]:
    """Failed requests due in ``[start, end)`` by kind."""
    kinds: dict[str, int] = {}
    for s in samples:
        if start <= s.due < end and not s.ok:
            kinds[s.error] = kinds.get(s.error, 0) + 1
    return kinds


def cold_start(client: Any, run: int, idle_bound: float) -> tuple[float | None, str]:
    """``(seconds from a request to its answer at zero replicas, "")`` or ``(None, why)``."""
    app = f"el-zero-{run}"
    try:
        client.apply(spec(app, "elastin", zero=True), file=f"{app}.yaml")
    except Exception as e:  # the server refused the spec: say so, measure the rest
        return None, f"cold_start_s not measured: the server refused `min: 0` ({e})"
    try:
        port = listener(client, app)
        t0 = time.monotonic()
        while time.monotonic() - t0 < idle_bound:
            desired, _ = count(client, app)
            live = [a for a in client.allocations(app=app, workload="api") if not a.terminal]
            if desired == 0 and not live:
                break
            time.sleep(POLL)
        else:
            return None, (
                "cold_start_s not measured: the `min: 0` service (idle_after: 2s) still had "
                f"{count(client, app)[0]} replica(s) after {idle_bound:.0f} s without a "
                "request (is scale to zero wired in this build?)"
            )
        start = time.monotonic()
        ok = get_once(port, timeout=30)
        took = time.monotonic() - start
        if not ok:
            return None, f"cold_start_s not measured: the held request failed after {took:.1f} s"
        return took, ""
    finally:
        client.delete_app(app)
        wait_for(lambda: all(a.terminal for a in client.allocations(app=app)), 60, f"{app} to stop")


def dump(tl: Timeline) -> dict[str, Any]:
    """A timeline as JSON: its marks, the offered rates, the polls and each second's
    answered requests and p99 (None: no request due; inf: a failure)."""
    return {
        "step_up": tl.step_up,
        "step_down": tl.step_down,
        "end": tl.end,
        "stale_retries": tl.stale_retries,
        "failures": [(s.due, s.error) for s in tl.samples if not s.ok][:10_000],
        "rates": tl.rates,
        "counts": [(c.t, c.desired, c.ready) for c in tl.counts],
        "decisions": tl.decisions,
        "events": tl.events,
        "per_second": [(t, n, None if p is None else min(p, 1e9)) for t, n, p in per_second(tl)],
    }


# -- the plot --------------------------------------------------------------------------------


def pyplot() -> tuple[Any, str]:
    """matplotlib's pyplot, installed into ``bench/.plot`` with pip when missing; ``(None,
    why)`` when it cannot be had."""
    with contextlib.suppress(ImportError):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt, ""
    if not (PLOT_DIR / "matplotlib").exists():
        log(f"installing matplotlib into {PLOT_DIR} (once)")
        argv = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        argv += ["--target", str(PLOT_DIR), "matplotlib"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"no plot: pip install matplotlib failed ({e})"
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return None, f"no plot: pip install matplotlib failed ({tail[0]})"
        (PLOT_DIR / ".gitignore").write_text("*\n")  # not the project's files
    sys.path.insert(0, str(PLOT_DIR))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return None, f"no plot: matplotlib from {PLOT_DIR} does not import ({e})"
    return plt, ""


def plot(timelines: dict[str, Timeline], path: Path) -> str:
    """Load, replicas and p99 over time, a column per system, into ``path``; a note when
    there is no plot."""
    plt, why = pyplot()
    if plt is None:
        return why
    fig, axes = plt.subplots(
        3, len(timelines), figsize=(6.5 * len(timelines), 8), sharex="col", squeeze=False
    )
    for col, (system, tl) in enumerate(timelines.items()):
        secs = per_second(tl)
        xs = [s for s, _, _ in secs]
        load, reps, lat = axes[0][col], axes[1][col], axes[2][col]
        load.step(
            [t for t, _ in tl.rates] + [tl.end],
            [r for _, r in tl.rates] + [tl.rates[-1][1]],
            where="post",
            label="offered",
            color="grey",
        )
        load.plot([x + 0.5 for x in xs], [a for _, a, _ in secs], label="answered (200)")
        load.set_ylabel("requests/s")
        load.legend(loc="upper right", fontsize=8)
        load.set_title(
            "elastin (defaults: 1 s decisions, 60 s down window)"
            if system == "elastin"
            else "HPA's defaults in Elastin (15 s, 5 min down window)",
            fontsize=10,
        )
        reps.step(
            [c.t for c in tl.counts],
            [c.desired for c in tl.counts],
            where="post",
            label="chosen",
            linestyle="--",
        )
        reps.step(
            [c.t for c in tl.counts], [c.ready for c in tl.counts], where="post", label="ready"
        )
        reps.axhline(NEEDED, color="grey", linewidth=0.6, linestyle=":")
        reps.set_ylabel("replicas")
        reps.set_ylim(0, MAX_REPLICAS + 0.5)
        reps.legend(loc="upper right", fontsize=8)
        cap = REQUEST_TIMEOUT * 1000
        lat.plot(
            [x + 0.5 for x, _, p in secs if p is not None],
            [min(p, cap) for _, _, p in secs if p is not None],
            label="p99 (a second with a failure at the top)",
        )
        lat.axhline(
            P99_TARGET_MS,
            color="red",
            linewidth=0.8,
            linestyle=":",
            label=f"target {P99_TARGET_MS:.0f} ms",
        )
        lat.set_yscale("log")
        lat.set_ylabel("p99 ms")
        lat.set_xlabel("seconds")
        lat.legend(loc="upper right", fontsize=8)
        for ax in (load, reps, lat):
            for t in (tl.step_up, tl.step_down):
                ax.axvline(t, color="black", linewidth=0.5, alpha=0.4)
    m = machine()
    fig.suptitle(
        f"bench/elasticity.py, {time.strftime('%Y-%m-%d')}: a step from {LOW_RPS:.0f} to "
        f"{HIGH_RPS:.0f} req/s, target {TARGET_RPS}/s per replica ({m['cpus']} cpus)",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return ""


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="BENCH.md's JSON object on stdout")
    ap.add_argument("--runs", type=int, default=1, help="repeat each system's step N times")
    ap.add_argument("--quick", action="store_true", help="short phases, one run (a smoke test)")
    ap.add_argument("--plot", action="store_true", help=f"draw {PNG.relative_to(HERE.parent)}")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="elastin,hpa (default both)")
    ap.add_argument(
        "--cases",
        default=",".join(CASES),
        help="step,cold_start (default both; cold_start: elastin)",
    )
    ap.add_argument(
        "--lb", default="", help="the service's mesh load balancing (default: the mesh's own)"
    )
    ap.add_argument(
        "--max-connections",
        type=int,
        default=0,
        help="the service's mesh max_connections (requests a replica gets at once; default: "
        "unlimited)",
    )
    ap.add_argument("--dump", type=Path, help="write each system's last timeline (JSON) here")
    args = ap.parse_args(argv)
    # a SIGTERM (a `timeout`, a kill) unwinds like Ctrl-C: the daemon and its workloads stop
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    systems = [s for s in args.systems.split(",") if s]
    cases = [c for c in args.cases.split(",") if c]
    if unknown := [c for c in cases if c not in CASES]:
        print(f"--cases: unknown case {unknown[0]!r}; known: {', '.join(CASES)}", file=sys.stderr)
        return 2
    if unknown := [s for s in systems if s not in SYSTEMS]:
        print(
            f"--systems: unknown system {unknown[0]!r}; known: {', '.join(SYSTEMS)}",
            file=sys.stderr,
        )
        return 2
    raise_fd_limit(2 * MAX_CONNECTIONS + 1024)
    if os.geteuid() != 0:
        print("bench/elasticity.py needs root (tasks run in their own cgroups)", file=sys.stderr)
        return 1
    from elastin.mesh.haproxy.process import haproxy_binary

    if haproxy_binary() is None:
        print("bench/elasticity.py needs HAProxy (make setup builds it)", file=sys.stderr)
        return 1
    phases = QUICK if args.quick else FULL
    runs = 1 if args.quick else max(1, args.runs)
    figures: dict[str, list[Measured]] = {s: [] for s in systems}
    colds: list[float] = []
    notes: list[str] = []
    last: dict[str, Timeline] = {}
    with tempfile.TemporaryDirectory(prefix="elastin-elasticity-") as d, daemon(Path(d)) as c:
        for run in range(runs):
            for system in systems if "step" in cases else ():  # A B, A B, ...
                tl = run_system(c, system, phases[system], run, args.lb, args.max_connections)
                m = measure(tl)
                figures[system].append(m)
                last[system] = tl
                log(f"{system} run {run + 1}: {m}")
            if "elastin" in systems and "cold_start" in cases:
                took, why = cold_start(c, run, idle_bound=15 if args.quick else 30)
                if took is None:
                    notes.append(why)
                    log(why)
                else:
                    colds.append(took)
                    log(f"cold start run {run + 1}: {took:.3f} s")
    rows: list[Row] = []
    case = f"step {LOW_RPS:.0f} -> {HIGH_RPS:.0f} req/s, {TARGET_RPS} rps/replica"
    if args.lb:
        case += f", lb {args.lb}"
    if args.max_connections:
        case += f", max_connections {args.max_connections}"
    for system, ms in ((s, ms) for s, ms in figures.items() if ms):
        for metric in ("reaction_s", "decision_s", "ready_s", "scale_down_s"):
            values = [v for m in ms if (v := getattr(m, metric)) is not None]
            if values:
                rows.append(Row(case, system, metric, tuple(values)))
            missing = len(ms) - len(values)
            if missing:
                notes.append(f"{system} {metric}: not reached in {missing} of {len(ms)} runs")
        rows.append(
            Row(case, system, "failed_requests", tuple(float(m.failed_requests) for m in ms))
        )
        rows.append(
            Row(case, system, "peak_ready_replicas", tuple(float(m.peak_ready) for m in ms))
        )
        waited = ", ".join(f"{m.waited_down_s:.0f}" for m in ms)
        notes.append(f"{system}: waited {waited} s after the step down")
        for i, m in enumerate(ms):
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(m.errors.items())) or "none"
            notes.append(
                f"{system} run {i + 1}: failed requests by kind: {kinds}; "
                f"{m.failed_after_down} of them after the step down; {m.stale_retries} "
                "requests sent again after a kept-alive connection closed (not failures)"
            )
    if colds:
        rows.append(
            Row(
                "cold start, zero replicas to the first response",
                "elastin",
                "cold_start_s",
                tuple(colds),
            )
        )
    if args.dump:
        args.dump.write_text(json.dumps({s: dump(tl) for s, tl in last.items()}))
    if args.plot and last:
        if why := plot(last, PNG):
            notes.append(why)
        else:
            notes.append(f"plot: {PNG}")
    if args.json:
        print(json.dumps({**document(BENCH, rows), "notes": notes}))
    else:
        emit(
            BENCH,
            rows,
            as_json=False,
            title=f"Elasticity: p99 target {P99_TARGET_MS:.0f} ms, {WORK_MS:g} ms of work",
        )
        for n in notes:
            print(f"note: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

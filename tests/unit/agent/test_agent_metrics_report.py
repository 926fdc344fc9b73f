"""The agent's one-second metrics report: HAProxy's longest response read per backend and
server, the report built from samples and the proxy's counters (and read back by the
server's parser), readiness, and the metrics loop beside the heartbeat (which then takes the
loop's samples rather than sampling again)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from agent_support import offline_agent

from elastin.agent.sampling import (
    Page,
    build_report,
    burst,
    endpoint_allocation,
    gauge_pages,
    instance_reading,
    is_ready,
    port_baseline,
    recent_usage,
)
from elastin.mesh.haproxy.stats import parse_stats
from elastin.mesh.model.traffic import ClusterStats, EndpointStats
from elastin.model.cluster import Allocation, Usage
from elastin.model.resources import Resources
from elastin.model.workload import Autoscale, HealthCheck, MetricTarget, Port, Workload
from elastin.server.windows import parse_report

HEADER = "# pxname,svname,scur,qcur,stot,req_tot,rtime,rtime_max,mode,status,"


def test_the_longest_response_is_read_per_backend_and_server() -> None:
    text = "\n".join(
        [
            HEADER,
            "c_shop.api.http,e_a1-http,1,0,60,,4,25,http,UP,",
            "c_shop.api.http,BACKEND,1,2,60,60,4,25,http,UP,",
            "",
        ]
    )
    api = parse_stats(text)["shop.api.http"]
    assert (api.avg_response_ms, api.max_response_ms, api.queued) == (4, 25, 2)
    (e,) = api.endpoints
    assert (e.avg_response_ms, e.max_response_ms) == (4, 25)


ALLOC = Allocation(
    id="abc-1",
    app="shop",
    workload="api",
    index=0,
    resources=Resources(cpu=500, memory=1 << 28),
)


def test_the_report_carries_samples_and_counters_the_server_reads() -> None:
    stats = ClusterStats(
        "shop",
        "api",
        "http",
        "http",
        requests=100,
        responses_5xx=3,
        response_errors=1,
        active=2,
        queued=1,
        avg_response_ms=7,
        max_response_ms=30,
        endpoints=(EndpointStats("abc-1-http", "UP", 2, 60, "", 6, 30),),
    )
    usage = Usage(cpu=123.4567, memory=1 << 20)
    body = build_report(
        50.0, 1.0, {ALLOC.id: instance_reading(ALLOC, usage, True)}, {"shop.api.http": stats}
    )
    report = parse_report(body)  # what the server does with it
    i = report.instances["abc-1"]
    assert (i.app, i.workload, i.cpu, i.memory) == ("shop", "api", 123.457, 1 << 20)
    assert (i.cpu_request, i.memory_request, i.ready) == (500, 1 << 28, True)
    p = report.ports["shop.api.http"]
    assert (p.requests, p.errors, p.active, p.queued, p.avg_ms, p.max_ms) == (100, 4, 2, 1, 7, 30)
    assert p.endpoints["abc-1"].requests == 60  # keyed by allocation, not endpoint id
    assert endpoint_allocation("abc-1-http", "http") == "abc-1"
    assert endpoint_allocation("odd", "http") == "odd"


def test_ready_is_the_registrys_definition() -> None:
    plain = Workload(name="api", command=("x",))
    checked = Workload(name="api", command=("x",), health=HealthCheck(type="http", port="http"))
    assert is_ready(ALLOC, plain, "running", None)
    assert not is_ready(ALLOC, plain, "running", False)
    assert not is_ready(ALLOC, checked, "running", None)  # no verdict yet
    assert is_ready(ALLOC, checked, "running", True)
    assert not is_ready(ALLOC, plain, "starting", None)


def test_recent_usage_only_while_fresh_and_running() -> None:
    u = Usage(cpu=1.0, sampled_at=100.0)
    assert recent_usage(u, True, 102.0, 3.0) is u
    assert recent_usage(u, True, 104.0, 3.0) is None  # stale: sample again
    assert recent_usage(u, False, 101.0, 3.0) is None
    assert recent_usage(Usage(), True, 101.0, 3.0) is None  # never sampled


class FakeClient:
    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Usage]] = []

    async def node_metrics(self, node_id: str, report: dict[str, Any]) -> None:
        self.reports.append(report)

    async def heartbeat(self, node_id: str, usage: dict[str, Usage], *_: Any) -> None:
        self.heartbeats.append(usage)


def fake_runner(clock: Any) -> SimpleNamespace:
    r = SimpleNamespace(
        alloc=ALLOC,
        workload=Workload(name="api", command=("x",)),
        state=SimpleNamespace(status="running", healthy=None, usage=Usage()),
        handle=object(),
        samples=0,
    )

    async def sample() -> Usage:
        r.samples += 1
        u = Usage(cpu=100.0 * r.samples, memory=5, sampled_at=clock.time())
        r.state.usage = u
        return u

    r.sample = sample
    return r


async def until(cond: Any) -> None:
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


async def test_the_metrics_loop_reports_and_the_heartbeat_takes_its_samples(
    tmp_path: Path,
) -> None:
    agent = offline_agent(tmp_path)
    client = FakeClient()
    agent.client = client  # type: ignore[assignment]
    runner = fake_runner(agent.clock)
    agent.runners[ALLOC.id] = runner  # type: ignore[assignment]
    loop = asyncio.create_task(agent.report_metrics())
    await until(lambda: len(client.reports) >= 2)
    loop.cancel()
    report = client.reports[0]
    assert report["instances"]["abc-1"]["cpu"] == 100.0 and report["ports"] == {}
    assert report["interval"] == 1.0
    # rates run on the agent's monotonic clock, within one series (this agent process)
    first, second = client.reports[:2]
    assert first["series"] and second["series"] == first["series"]
    assert second["mono"] - first["mono"] == 1.0  # the interval, whatever the wall clock did
    assert parse_report(second).mono == second["mono"]
    sampled = runner.samples
    beat = asyncio.create_task(agent.heartbeat())
    await until(lambda: client.heartbeats)
    beat.cancel()
    assert runner.samples == sampled  # the loop's sample, not a second one a moment later
    assert client.heartbeats[0]["abc-1"].cpu == 100.0 * sampled
    agent.cfg.metrics_interval = 0  # no metrics loop: the heartbeat samples itself
    client.heartbeats.clear()
    beat = asyncio.create_task(agent.heartbeat())
    await until(lambda: client.heartbeats)
    beat.cancel()
    assert runner.samples == sampled + 1


def test_the_metrics_interval_is_off_or_half_a_second_to_a_minute() -> None:
    from click.testing import CliRunner

    from elastin.cli.main import cli

    for bad in ("0.001", "0.2", "61", "-1"):
        r = CliRunner().invoke(cli, ["agent", "--metrics-interval", bad])
        assert r.exit_code == 2, r.output
        assert "0 (no reports) or from 0.5 to 60 seconds" in r.output, r.output


# --- application gauges (issue #13) --------------------------------------------------------

APP_METRIC = MetricTarget("app", 10, name="queue_depth", port="metrics", path="/metrics")
AUTOSCALED = Workload(
    name="api",
    command=("x",),
    ports=(Port("http"), Port("metrics")),
    autoscale=Autoscale(
        min=1,
        max=5,
        metrics=(
            MetricTarget("cpu", 0.7),
            APP_METRIC,
            MetricTarget("app", 5, name="workers", port="metrics", path="/metrics"),
            MetricTarget("app", 1, name="lag", port="http", path="/stats"),
        ),
    ),
)


def test_the_gauges_read_go_in_the_instance_reading_and_the_server_reads_them() -> None:
    reading = instance_reading(ALLOC, Usage(cpu=1, memory=2), True, {"queue_depth": 7.5})
    assert reading["gauges"] == {"queue_depth": 7.5}
    assert "gauges" not in instance_reading(ALLOC, Usage(), True)  # none read: left out
    report = parse_report(build_report(50.0, 1.0, {ALLOC.id: reading}, {}))
    assert report.instances[ALLOC.id].gauges == (("queue_depth", 7.5),)


def test_gauge_pages_group_the_app_metrics_by_port_and_path() -> None:
    pages = gauge_pages(AUTOSCALED, {"http": 8080, "metrics": 9090})
    assert pages == (
        Page(9090, "/metrics", ("queue_depth", "workers")),
        Page(8080, "/stats", ("lag",)),
    )
    assert pages[0].url == "http://127.0.0.1:9090/metrics"
    assert gauge_pages(AUTOSCALED, {"http": 8080}) == (Page(8080, "/stats", ("lag",)),)
    assert gauge_pages(Workload(name="api", command=("x",)), {"http": 8080}) == ()
    assert gauge_pages(None, {"http": 8080}) == ()


async def test_the_metrics_loop_reads_the_gauges_of_ready_instances(tmp_path: Path) -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                seen.append(await reader.readuntil(b"\r\n\r\n"))
                body = b'queue_depth{q="a"} 12\nqueue_depth{q="b"} 3\n'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    agent = offline_agent(tmp_path)
    client = FakeClient()
    agent.client = client  # type: ignore[assignment]
    ready = fake_runner(agent.clock)
    ready.workload, ready.ports = AUTOSCALED, {"metrics": port}
    starting = fake_runner(agent.clock)
    starting.alloc = replace(ALLOC, id="abc-2", index=1)
    starting.workload, starting.ports = AUTOSCALED, {"metrics": port}
    starting.state.status = "starting"
    agent.runners[ALLOC.id] = ready  # type: ignore[assignment]
    agent.runners["abc-2"] = starting  # type: ignore[assignment]
    loop = asyncio.create_task(agent.report_metrics())
    try:
        for _ in range(500):  # bounded polling: real sockets
            if client.reports:
                break
            await asyncio.sleep(0.01)
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        server.close()
        await server.wait_closed()
    instances = client.reports[0]["instances"]
    assert instances["abc-1"]["gauges"] == {"queue_depth": 15.0}  # both label sets summed
    assert "gauges" not in instances["abc-2"]  # not ready: not scraped
    assert seen and b"GET /metrics " in seen[0]


def test_burst_is_a_jump_well_above_the_baseline() -> None:
    base = {"a.b.http": (50.0, 150.0), "a.c.http": (0.0, 0.0)}  # 50/s over 3 s; c idle
    # 0.25 s after the report: b took 80 requests (320/s), c 2 (8/s: below BURST_MIN)
    now = {"a.b.http": 1080, "a.c.http": 12, "a.new.http": 5}
    before = {"a.b.http": 1000, "a.c.http": 10}
    assert burst(before, base, now, 0.25) == ["a.b.http"]
    assert burst(before, {"a.b.http": (300.0, 900.0)}, now, 0.25) == []  # no jump from 300
    assert burst({"a.b.http": 2000}, base, now, 0.25) == []  # went down: another worker
    assert burst(before, base, now, 0.0) == []
    # noise is no jump: at 90/s, 0.25 s hold 22.5 on average; 40 (160/s) is chance about
    # once in 2,000 looks, 43 or more far less (4 standard deviations, the baseline's too)
    steady = {"a.b.http": (90.0, 270.0)}
    assert burst({"a.b.http": 0}, steady, {"a.b.http": 40}, 0.25) == []
    assert burst({"a.b.http": 0}, steady, {"a.b.http": 45}, 0.25) == ["a.b.http"]
    # a baseline measured from few requests is noisy itself: the jump must be larger
    assert burst({"a.b.http": 0}, {"a.b.http": (90.0, 22.0)}, {"a.b.http": 45}, 0.25) == []


def test_the_baseline_spans_the_last_readings() -> None:
    def at(n: int) -> dict[str, ClusterStats]:
        return {"a.b.http": ClusterStats("a", "b", "http", "http", requests=n)}

    readings = [(0.0, at(0)), (1.0, at(50)), (2.0, at(100)), (3.0, at(300))]
    assert port_baseline(readings) == {"a.b.http": (100.0, 300.0)}
    assert port_baseline(readings[:1]) == {}
    assert port_baseline([(0.0, at(10)), (1.0, at(5))]) == {}  # went down


class JumpingMesh:
    """A node's proxy whose one port takes 50 requests/s, then 500/s from ``step`` on
    (monotonic seconds); its arrival counters as ``MeshManager`` reads them."""

    def __init__(self, clock: Any, step: float) -> None:
        self.clock, self.step = clock, step
        self.proxy = SimpleNamespace(command=self._command)
        self.reported_arrivals: tuple[Any, dict[str, int], float] = (None, {}, 0.0)
        self.looks = 0

    async def _command(self, _: str) -> str:
        return ""

    def count(self) -> int:
        t = self.clock.monotonic()
        return int(50 * min(t, self.step) + 500 * max(0.0, t - self.step))

    async def read_stats(self, mark: bool = False) -> dict[str, ClusterStats]:
        n = self.count()
        if mark:
            self.reported_arrivals = ("w1", {"shop.api.http": n}, self.clock.monotonic())
        return {"shop.api.http": ClusterStats("shop", "api", "http", "http", requests=n)}

    async def arrivals(self) -> tuple[Any, dict[str, int]]:
        self.looks += 1
        return "w1", {"shop.api.http": self.count()}


async def test_a_load_jump_is_reported_at_once_not_at_the_end_of_the_interval(
    tmp_path: Path,
) -> None:
    """Between two reports the loop looks at the proxy's arrivals; when a port's load
    jumped it reports at once, marked early (the server then evaluates the autoscaler at
    once), and its interval starts again (issue #13, reaction time)."""
    agent = offline_agent(tmp_path)
    client = FakeClient()
    agent.client = client  # type: ignore[assignment]
    start = agent.clock.monotonic()
    mesh = JumpingMesh(agent.clock, step=start + 2.1)
    agent.mesh = mesh  # type: ignore[assignment]
    loop = asyncio.create_task(agent.report_metrics())
    await until(lambda: len(client.reports) >= 7)
    loop.cancel()
    times = [round(r["mono"] - start, 2) for r in client.reports]
    early = [bool(r.get("early")) for r in client.reports]
    # regular at 0, 1, 2; the load jumps at 2.1; seen at the look at 2.25 (320/s since the
    # report at 2, against 50/s over the last readings), and again at 2.5 and 2.75 while
    # the baseline catches up; then a quiet interval
    assert times[:7] == [0.0, 1.0, 2.0, 2.25, 2.5, 2.75, 3.75]
    assert early[:7] == [False, False, False, True, True, True, False]
    report = parse_report(client.reports[3])
    assert report.early and [str(p) for p in report.jumped] == ["shop.api.http"]


def test_a_report_names_at_most_as_many_jumped_ports_as_the_server_takes() -> None:
    from elastin.mesh.model.traffic import MAX_JUMPED  # one bound, agent and server

    body = build_report(50.0, 1.0, {}, {}, 1.0, "s", [f"a.s{i}.http" for i in range(2000)])
    assert len(body["jumped"]) == MAX_JUMPED  # more would have the whole report refused
    parse_report(body)

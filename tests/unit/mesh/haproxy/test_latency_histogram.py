"""The mesh's latency histogram (issue #13, a measured p99): only a service whose autoscale has
a ``p99`` metric gets one (``Cluster.latency_histogram``); its backend counts each endpoint's
response in one GPC counter per bucket (exclusive ranges) of the caller's wait — queue,
connect and response headers (``%Tw + %Tc + %Tr``, summed once into ``LATENCY_VAR``) — a 504
of the mesh's own at the request timeout and its 503 after the queue timeout at that one,
never a response twice; every other service renders as before. The agent
asks for the tables with ``show stat`` (``stats_command``), reads them (``parse_latency``),
keeps them monotonic across reloads (``Totals``) and reports them cumulative per bucket
(``latency_buckets``). HAProxy 3.0 accepts the text (``haproxy -c``), and so does 2.6, which
keeps no histogram (its fetches are 3.0's: the rules are read by 3.0 only). With real traffic:
tests/integration/mesh/test_mesh_p99.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from elastin.agent.sampling import latency_buckets, port_reading
from elastin.mesh.haproxy.process import haproxy_binary
from elastin.mesh.haproxy.render import LATENCY_VAR, Paths, latency_bucket, render
from elastin.mesh.haproxy.stats import (
    STATS_COMMAND,
    Totals,
    Worker,
    parse_latency,
    parse_stats,
    stats_command,
)
from elastin.mesh.model import CircuitBreaker, Cluster, Listener, MeshSnapshot, Timeouts
from elastin.mesh.model.build import build_clusters
from elastin.mesh.model.traffic import LATENCY_BOUNDS_MS, ClusterStats
from elastin.mesh.model.types import MeshModelError
from elastin.model.spec import parse_spec

N = len(LATENCY_BOUNDS_MS) + 1  # the buckets, with the one of slower responses


def snapshot(protocol: str = "http", **policy: object) -> MeshSnapshot:
    c = Cluster("a.w.http", protocol=protocol, **policy)  # type: ignore[arg-type]
    lst = Listener("c.w", 20001, "a.w.http", protocol=protocol)  # type: ignore[arg-type]
    return MeshSnapshot(1, "n1", (lst,), (c,))


def backend(text: str) -> list[str]:
    return text.split("backend c_a.w.http\n", 1)[1].split("\n\n", 1)[0].splitlines()


PATHS = Paths("/tmp/x.sock")


def test_a_p99_service_counts_each_response_in_one_bucket() -> None:
    lines = backend(render(snapshot(latency_histogram=True), PATHS))
    assert f"    stick-table type integer size 1 store gpc({N})" in lines
    assert "    http-request track-sc0 int(1)" in lines
    rules = [x.strip() for x in lines if x.startswith("    http-response sc-inc-gpc(")]
    assert rules[:3] == [
        f"http-response sc-inc-gpc(0,0) if {{ var({LATENCY_VAR}) -m int le 5 }}",
        f"http-response sc-inc-gpc(1,0) if {{ var({LATENCY_VAR}) -m int 6:10 }}",
        f"http-response sc-inc-gpc(2,0) if {{ var({LATENCY_VAR}) -m int 11:15 }}",
    ]
    assert rules[-1] == (
        f"http-response sc-inc-gpc({N - 1},0) if {{ var({LATENCY_VAR}) -m int gt 30000 }}"
    )
    assert len(rules) == N  # one rule, one counter per bucket: each response matches one
    assert latency_bucket(30000) == N - 2 and latency_bucket(30001) == N - 1


def test_the_time_is_the_callers_wait_queue_and_connect_included() -> None:
    """%Tw + %Tc + %Tr, summed once into a variable before the buckets compare it."""
    lines = backend(render(snapshot(latency_histogram=True), PATHS))
    v = LATENCY_VAR
    timed = [x.strip() for x in lines if f"set-var({v})" in x]
    assert timed == [
        f"http-response set-var({v}) req.timer.queue",
        f"http-response set-var({v}) bc.timer.connect,add({v})",
        f"http-response set-var({v}) res.timer.hdr,add({v})",
    ]
    first_bucket = next(i for i, x in enumerate(lines) if "http-response sc-inc-gpc(" in x)
    assert max(i for i, x in enumerate(lines) if f"set-var({v})" in x) < first_bucket


def test_the_mesh_answers_after_a_wait_are_counted_once_at_their_timeout() -> None:
    c = {"timeouts": Timeouts(request=2.0), "breaker": CircuitBreaker(queue_timeout=0.3)}
    lines = backend(render(snapshot(latency_histogram=True, **c), PATHS))
    after = [x.strip() for x in lines if x.startswith("    http-after-response sc-inc-gpc")]
    assert after == [
        # the mesh's 504: an endpoint's response (counted above, LATENCY_VAR set) is not
        # counted again, even a 504 with x-elastin-error (a gateway relaying one)
        f"http-after-response sc-inc-gpc({latency_bucket(2000)},0) if {{ status 504 }} "
        f"!{{ var({LATENCY_VAR}) -m found }}",
        # the 503 after the queue timeout (termination state sQ), at the queue timeout
        f"http-after-response sc-inc-gpc({latency_bucket(300)},0) if {{ status 503 }} "
        "{ txn.sess_term_state sQ }",
    ]


def on(version: tuple[int, int], lines: list[str]) -> list[str]:
    """The lines HAProxy ``version`` reads of ``lines``: its ``.if version_atleast(X)`` /
    ``.else`` / ``.endif`` blocks resolved (one level, as the renderer writes them)."""
    out: list[str] = []
    keep: bool | None = None  # None: outside a block
    for line in lines:
        word = line.strip()
        if word.startswith(".if version_atleast("):
            major, minor = word.removeprefix(".if version_atleast(").rstrip(")").split(".")
            keep = version >= (int(major), int(minor))
        elif word == ".else":
            keep = not keep
        elif word == ".endif":
            keep = None
        elif keep is None or keep:
            out.append(line)
    return out


def test_with_a_rate_limit_the_histogram_shares_its_entry() -> None:
    lines = on((3, 0), backend(render(snapshot(latency_histogram=True, rate_limit=50), PATHS)))
    tables = [x for x in lines if "stick-table" in x]
    assert tables == [f"    stick-table type integer size 1 store gpc({N}),http_req_rate(1s)"]
    assert lines.count("    http-request track-sc0 int(1)") == 1
    assert any("sc_http_req_rate(0) gt 50" in x for x in lines)


@pytest.mark.parametrize("rate_limit", [None, 50])
def test_before_haproxy_3_a_p99_service_keeps_no_histogram(rate_limit: int | None) -> None:
    """HAProxy 2.6 lacks the fetches the histogram's rules use (``req.timer.queue``,
    ``bc.timer.connect``, ``res.timer.hdr``, ``txn.sess_term_state``): it reads the backend
    of a service without a p99 metric — no histogram table (``show table`` of it answers "No
    such table"), its rate limit's own when it has one. HAProxy accepting both:
    ``test_haproxy_accepts_the_histogram``."""
    p99 = on(
        (2, 6), backend(render(snapshot(latency_histogram=True, rate_limit=rate_limit), PATHS))
    )
    plain = on((2, 6), backend(render(snapshot(rate_limit=rate_limit), PATHS)))
    assert p99 == plain
    assert not any("gpc" in x or LATENCY_VAR in x or "timer" in x for x in p99)


def test_a_504_is_counted_at_the_services_own_timeout_and_before_grpc_rewrites_it() -> None:
    snap = snapshot("grpc", latency_histogram=True, timeouts=Timeouts(request=0.3))
    lines = backend(render(snap, PATHS))
    count = next(i for i, x in enumerate(lines) if "sc-inc-gpc" in x and "status 504" in x)
    assert f"sc-inc-gpc({latency_bucket(300)},0)" in lines[count]
    queue = next(i for i, x in enumerate(lines) if "sc-inc-gpc" in x and "status 503" in x)
    rewrite = next(i for i, x in enumerate(lines) if "set-status 200" in x)
    assert count < rewrite and queue < rewrite


def test_other_services_render_as_before() -> None:
    for policy in ({}, {"rate_limit": 50}):
        text = render(snapshot(**policy), PATHS)  # type: ignore[arg-type]
        assert "gpc" not in text and "res.timer.hdr" not in text.split("backend", 1)[1]
        assert LATENCY_VAR not in text and "sess_term_state" not in text
    lines = backend(render(snapshot(rate_limit=50), PATHS))
    assert "    stick-table type integer size 1 expire 10s store http_req_rate(1s)" in lines


def test_a_tcp_port_has_no_histogram() -> None:
    with pytest.raises(MeshModelError, match="latency_histogram needs an HTTP or gRPC port"):
        Cluster("a.w.db", protocol="tcp", latency_histogram=True)


SPEC = """
app: a
services:
  w:
    command: "true"
    ports: {http: 0, db: {port: 0, protocol: tcp}}
    autoscale: {min: 1, max: 3, metrics: [%s]}
"""


@pytest.mark.parametrize(
    ("metrics", "http", "tcp"),
    [("p99: 250ms", True, False), ("rps: 10", False, False), ("{rps: 10}, {p99: 1s}", True, False)],
)
def test_the_cluster_of_a_p99_service_keeps_a_histogram(
    metrics: str, http: bool, tcp: bool
) -> None:
    app = parse_spec(SPEC % metrics)
    clusters = {c.name: c for c in build_clusters({"a": app}, [], {})}
    assert clusters["a.w.http"].latency_histogram is http
    assert clusters["a.w.db"].latency_histogram is tcp


# Debian 12's HAProxy 2.6, which the mesh still runs (with a warning) when
# ELASTIN_HAPROXY names it; installed beside the 3.0 `make setup` builds
DEBIAN_2_6 = "/usr/sbin/haproxy"


def _binaries() -> list[object]:
    return [
        pytest.param(
            haproxy_binary(),
            id="default",
            marks=pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed"),
        ),
        pytest.param(
            DEBIAN_2_6,
            id="2.6",
            marks=pytest.mark.skipif(
                not Path(DEBIAN_2_6).is_file(), reason=f"{DEBIAN_2_6} is not installed"
            ),
        ),
    ]


@pytest.mark.parametrize("binary", _binaries())
@pytest.mark.parametrize("rate_limit", [None, 10])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_haproxy_accepts_the_histogram(
    tmp_path: Path, protocol: str, rate_limit: int | None, binary: str
) -> None:
    """The default haproxy (3.0, ``make setup``) and Debian's 2.6 both accept the
    configuration of a p99 service: on 2.6 a refused one would take every service of the
    node's proxy down."""
    snap = snapshot(
        protocol,
        latency_histogram=True,
        rate_limit=rate_limit,
        breaker=CircuitBreaker(max_connections=1, queue_timeout=0.3),
    )
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(render(snap, Paths(str(tmp_path / "x.sock"))) + "\n")
    done = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# --- reading it back ------------------------------------------------------------------------

GPCS = " ".join(f"gpc{i}={i * 2}" for i in range(N))
TABLE = (
    "# table: c_a.w.http, type: integer, size:1, used:1\n"
    f"0x55c0c2effd20: key=1 use=0 exp=0 shard=0 http_req_rate(1000)=5 {GPCS}\n\n"
)
EMPTY = "# table: c_a.v.http, type: integer, size:1, used:0\n\n"
STAT = (
    "# pxname,svname,stot,mode,\n"
    "c_a.w.http,BACKEND,7,http,\n"
    "c_a.v.http,BACKEND,0,http,\n"
    "c_a.u.http,BACKEND,0,http,\n\n"
)


def test_parse_latency_reads_each_tables_counters() -> None:
    answer = (
        TABLE
        + EMPTY
        + "No such table\n\n"
        + "# table: c_a.x.http, type: integer\n0x1: key=1 gpc0=4\n\n"
    )
    got = parse_latency(answer)
    assert got["a.w.http"] == tuple(i * 2 for i in range(N))
    assert got["a.v.http"] == (0,) * N  # no response since the worker started
    assert "a.x.http" not in got  # not one counter per bucket: not the mesh's table


def test_parse_stats_puts_the_histograms_in_the_clusters_stats() -> None:
    stats = parse_stats(STAT + TABLE + EMPTY)
    assert stats["a.w.http"].requests == 7
    assert stats["a.w.http"].latency == tuple(i * 2 for i in range(N))
    assert stats["a.v.http"].latency == (0,) * N
    assert stats["a.u.http"].latency == ()  # no histogram for it


def test_stats_command_asks_for_the_tables_of_p99_services_only() -> None:
    plain = Cluster("a.u.http")
    p99 = Cluster("a.w.http", latency_histogram=True)
    snap = MeshSnapshot(1, "n1", (), (plain, p99))
    assert stats_command(snap) == STATS_COMMAND + ";show table c_a.w.http"
    assert stats_command(MeshSnapshot(1, "n1", (), (plain,))) == STATS_COMMAND
    assert stats_command(None) == STATS_COMMAND


def stats(latency: tuple[int, ...], requests: int = 0) -> dict[str, ClusterStats]:
    return {"a.w.http": ClusterStats("a", "w", "http", "http", requests, latency=latency)}


def test_the_buckets_stay_monotonic_across_a_reload() -> None:
    totals = Totals()
    first = (3, 1) + (0,) * (N - 2)
    got, _ = totals.add(Worker(10, 1), stats(first, 4))
    assert got["a.w.http"].latency == first
    got, moved = totals.add(Worker(11, 2), stats((1,) + (0,) * (N - 1), 1))  # a new worker
    assert moved
    assert got["a.w.http"].latency == (4, 1) + (0,) * (N - 2)
    back = Totals.from_data(totals.to_data())  # counters.json
    got, _ = back.add(Worker(11, 2), stats((2,) + (0,) * (N - 1), 2))
    assert got["a.w.http"].latency == (5, 1) + (0,) * (N - 2)


def test_a_wrapped_bucket_counter_moves_only_itself_into_the_base() -> None:
    """GPC counters are 32 bits: one bucket wrapping in the same worker is that counter
    gone down, not a new worker — only its own count joins the base (a reviewer saw every
    counter of the node doubled: requests 4e9 -> 8e9)."""
    totals = Totals()
    w = Worker(10, 1)
    big = (4_294_967_000,) + (0,) * (N - 1)
    totals.add(w, stats(big, 4_000_000_000))
    got, _ = totals.add(w, stats((700,) + (0,) * (N - 1), 4_000_001_000))
    assert got["a.w.http"].requests == 4_000_001_000  # not added to itself
    assert got["a.w.http"].latency[0] == 4_294_967_000 + 700


def test_the_report_carries_cumulative_le_buckets() -> None:
    counts = (3, 1) + (0,) * (N - 3) + (2,)
    s = stats(counts, 6)["a.w.http"]
    reading = port_reading(s)
    assert reading["latency_buckets"] == latency_buckets(counts)
    assert reading["latency_buckets"][:3] == [[5, 3], [10, 4], [15, 4]]
    assert reading["latency_buckets"][-2:] == [[30000, 4], [None, 6]]
    assert "latency_buckets" not in port_reading(stats(())["a.w.http"])

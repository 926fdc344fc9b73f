"""What the latency histogram of a measured p99 costs a mesh hop (issue #13): the same
HAProxy, upstreams and load, interleaved in one run, through

* ``elastin`` — one mesh hop with the mesh model's default policy (``bench/proxy.py``'s);
* ``elastin-p99`` — the same cluster with ``latency_histogram`` (a service autoscaled on its
  p99): a one-entry stick table with a GPC array, tracked per request, the caller's wait
  (queue + connect + response headers: three ``http-response set-var`` rules summing
  ``req.timer.queue``, ``bc.timer.connect`` and ``res.timer.hdr`` into a variable) and one
  ``http-response sc-inc-gpc`` rule per bucket on that variable (exclusive buckets: one
  increment per response);
* ``elastin-p99-tr`` — the former rules, for what the wait costs over them: the buckets on
  ``res.timer.hdr`` alone (the endpoint's time, ``%Tr``; no variable);
* ``elastin-p99-cumulative`` — the rejected alternative: the same rules with ``le``
  conditions (cumulative buckets, as Prometheus exports them: every bucket at or above a
  response's time is incremented), to show why the exclusive form was chosen.

Cases: ``http1_keepalive`` (wrk, 20 connections: the proxy saturated) and
``http1_rate_5000`` (h2load at a fixed 5,000 requests/s: what a node pays). Rows: ``rps``
and ``cpu_us_per_req`` (the proxy's processes' user + system time per request, bench/proxy.py's
measure), and per run ``cpu_us_per_req_ratio_vs_elastin`` (and for ``elastin-p99``
``..._vs_elastin_p99_tr``). HAProxy alone is measured: no access
log collector runs (the histogram is HAProxy's work only).

Usage: ``python bench/p99_cost.py [--json] [--runs N] [--seconds S] [--cases ...]
[--systems ...]`` (``elastin`` is always run: the ratios' base).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy as hop
from _common import Row, emit, ratio_rows
from elastin.mesh.haproxy.process import HaproxyProcess, haproxy_binary
from elastin.mesh.haproxy.render import render
from elastin.mesh.model.traffic import LATENCY_BOUNDS_MS

CASES = ("http1_keepalive", "http1_rate_5000")
SYSTEMS = ("elastin", "elastin-p99", "elastin-p99-tr", "elastin-p99-cumulative")
WAIT = "txn.elastin_ms"  # render.LATENCY_VAR
TIMING = re.compile(rf"    http-response set-var\({re.escape(WAIT)}\) [^\n]*\n")
RULE = re.compile(
    rf"(    http-response sc-inc-gpc\((\d+),0\)) if \{{ var\({re.escape(WAIT)}\) -m int [^}}]*\}}"
)


def cumulative(text: str) -> str:
    """The histogram's rules with cumulative (``le``) buckets instead of exclusive ones."""

    def le(m: re.Match[str]) -> str:
        i = int(m[2])
        if i >= len(LATENCY_BOUNDS_MS):
            return m[1]  # +Inf: every response
        return f"{m[1]} if {{ var({WAIT}) -m int le {LATENCY_BOUNDS_MS[i]} }}"

    return RULE.sub(le, text)


def endpoint_time(text: str) -> str:
    """The former rules: the buckets on the endpoint's time alone (``res.timer.hdr``)."""
    text = TIMING.sub("", text)
    return text.replace(f"var({WAIT}) -m int ", "res.timer.hdr ")


@contextlib.contextmanager
def system(name: str, case: str, p: hop.Ports, tmp: Path, haproxy: str) -> Iterator[hop.Running]:
    listen = hop.free_port()
    d = Path(tempfile.mkdtemp(prefix=f"{name}-{case}-", dir=tmp))
    snap = hop.elastin_snapshot(case, listen, p, 0)
    if name != "elastin":
        snap = replace(snap, clusters=(replace(snap.clusters[0], latency_histogram=True),))
    hp = HaproxyProcess(d / "mesh", haproxy)
    text = render(snap, hp.paths())
    if name == "elastin-p99-cumulative":
        text = cumulative(text)
    elif name == "elastin-p99-tr":
        text = endpoint_time(text)
    try:
        with hop.started_on(hop.PROXY_CPU):
            hp.ensure(text + "\n")
        hop.wait_port(listen)
        yield hop.Running(listen, hop.tree_pids(hp.master_pid() or 0), [])
    finally:
        hp.stop()


def measure(
    cases: list[str], systems: list[str], runs: int, seconds: float, tmp: Path, haproxy: str
) -> list[Row]:
    p = hop.Ports((hop.free_port(), hop.free_port()), (hop.free_port(), hop.free_port()))
    conf = hop.nginx_conf(tmp, "upstream", hop.upstream_body(p))
    samples: dict[tuple[str, str, str], list[float]] = {}

    def add(case: str, name: str, metric: str, value: float) -> None:
        samples.setdefault((case, name, metric), []).append(value)

    with hop.process(hop.on_load_cpu([hop.which("nginx"), "-c", str(conf)]), tmp / "up.log"):
        for port in (*p.h1, *p.h2):
            hop.wait_port(port)
        for case in cases:
            for _ in range(runs):
                cpu_per_req: dict[str, float] = {}
                for name in systems:
                    with system(name, case, p, tmp, haproxy) as run:
                        hop.pin(run.pids, hop.PROXY_CPU)
                        hop.wait_serving(case, run.port, tmp)
                        hop.load(case, run.port, 1.0, tmp)  # warm-up
                        cpu0 = hop.cpu_seconds(run.pids)
                        r = hop.load(case, run.port, seconds, tmp)
                        time.sleep(0.2)
                        cpu = hop.cpu_seconds(run.pids) - cpu0
                    if r.failed:
                        print(f"{case}, {name}: {r.failed} failed, not counted", file=sys.stderr)
                        continue
                    cpu_per_req[name] = cpu * 1e6 / max(1, r.requests)
                    add(case, name, "rps", r.rps)
                    add(case, name, "cpu_us_per_req", cpu_per_req[name])
                pairs = [(n, "elastin") for n in systems[1:]]
                pairs.append(("elastin-p99", "elastin-p99-tr"))
                for name, metric, value in ratio_rows(cpu_per_req, pairs, "cpu_us_per_req"):
                    add(case, name, metric, value)
            print(f"{case}: done", file=sys.stderr, flush=True)
    return [Row(c, n, m, tuple(v)) for (c, n, m), v in samples.items()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON object (bench/_common.py)")
    ap.add_argument("--runs", type=int, default=3, help="interleaved runs per case (3)")
    ap.add_argument("--seconds", type=float, default=5.0, help="load per run (5 s)")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--systems", nargs="+", choices=SYSTEMS[1:], default=list(SYSTEMS[1:]))
    args = ap.parse_args(argv)
    haproxy = haproxy_binary()
    if haproxy is None:
        raise SystemExit("no haproxy binary: run make setup (scripts/haproxy.sh)")
    with tempfile.TemporaryDirectory(prefix="p99-cost-") as tmp:
        systems = ["elastin", *args.systems]
        rows = measure(args.cases, systems, args.runs, args.seconds, Path(tmp), str(haproxy))
    title = f"latency histogram cost, {hop.haproxy_release(str(haproxy))}"
    emit("p99_cost", rows, as_json=args.json, title=title)
    return 0


if __name__ == "__main__":
    sys.exit(main())

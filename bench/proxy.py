"""What one mesh hop costs: the same upstreams and the same load, in one run, through

* ``direct`` — the client talks to the upstream itself;
* ``haproxy`` — HAProxy with a hand-written minimal configuration (no logs, no checks);
* ``nginx`` — nginx as a reverse proxy with a minimal configuration (upstream keep-alive);
* ``elastin`` — one mesh hop exactly as Elastin configures it: a ``MeshSnapshot`` with one
  listener and a two-endpoint cluster rendered by ``elastin.mesh.haproxy`` and started by
  ``HaproxyProcess`` — JSON access log, trace context, retries, health checks and outlier
  detection, the Prometheus exporter, all on — with the agent's access log collector
  draining HAProxy's log ring, on the proxy's core and counted in its cpu.

Cases: ``http1_keepalive`` and ``http1_new_conn`` (wrk), ``tcp`` (wrk over a TCP proxy),
``http2`` (h2load, h2c prior knowledge) and ``grpc_unary`` (h2load sending gRPC frames to a
gRPC-shaped upstream: POST, ``application/grpc``, trailers). Upstreams are nginx (one worker)
on two ports, and for gRPC nginx's ``grpc_pass``-free static answer with a ``grpc-status``
trailer. Systems run interleaved (A B C D, A B C D, …) and each row is the median of the runs.

The proxy under test is started on one core (so it sizes its threads for that core, as
HAProxy does by default), the upstreams and the load generator on the other, so that the
systems compete for nothing but their own work.

Rows: ``rps``, ``p50_ms``, ``p99_ms``, ``proxy_cpu_us_per_req`` (user + system time of the
proxy's processes over the run, per request), ``rss_mib`` (the proxy's processes) and, for
elastin, ``rps_ratio_vs_haproxy`` and ``cpu_ratio_vs_haproxy`` (cpu per request) per run
pair. Target (issue #3): elastin >= 0.95x raw HAProxy's rps in every case. On a machine
where the proxy shares the cores with the load, the rps ratio moves with whichever core
saturates first; the cpu ratio is the stable figure of what a mesh hop costs. Notes printed
with the table say what each peer could not do (nginx here has no stream module, so no TCP
row; it proxies HTTP/2 to HTTP/1.1 upstreams).

Usage: ``python bench/proxy.py [--json] [--runs N] [--seconds S] [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, emit
from elastin.mesh.haproxy.process import HaproxyProcess, haproxy_binary
from elastin.mesh.haproxy.render import render
from elastin.mesh.model import Cluster, Endpoint, Listener, MeshSnapshot
from elastin.model.workload import Protocol

SBIN = "/usr/sbin:/usr/local/sbin:/usr/bin:/bin"
CASES = ("http1_keepalive", "http1_new_conn", "tcp", "http2", "grpc_unary")
SYSTEMS = ("direct", "haproxy", "nginx", "elastin")
GRPC_PATH = "/bench.Echo/Unary"
GRPC_FRAME = b"\x00\x00\x00\x00\x04ping"  # uncompressed, 4-byte message


def which(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=SBIN)
    if path is None:
        raise SystemExit(f"{name} is not installed (make setup installs it)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def tree_pids(root: int) -> list[int]:
    """``root`` and its descendants (the proxy's master and workers)."""
    pids: list[int] = [root]
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d.name))
    i = 0
    while i < len(pids):
        pids += children.get(pids[i], [])
        i += 1
    return pids


PROXY_CPU, LOAD_CPU = 0, 1  # the proxy on one core; upstreams and load generator on the other


def pin(pids: list[int], cpu: int) -> None:
    """Pin every thread of ``pids`` to ``cpu`` (so the proxies compete with nothing)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task.name), {cpu})


def on_cpu(cpu: int, argv: list[str]) -> list[str]:
    """``argv`` started on ``cpu`` alone: a proxy sizes its threads for what it may use."""
    return [which("taskset"), "-c", str(cpu), *argv] if (os.cpu_count() or 1) >= 2 else argv


def on_load_cpu(argv: list[str]) -> list[str]:
    return on_cpu(LOAD_CPU, argv)


@contextlib.contextmanager
def started_on(cpu: int) -> Iterator[None]:
    """Processes started inside run on ``cpu`` (they inherit this process's affinity)."""
    before = os.sched_getaffinity(0)
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


@contextlib.contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def nginx_conf(tmp: Path, name: str, body: str) -> Path:
    d = tmp / name
    d.mkdir(exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(
        f"worker_processes 1;\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\n"
        f"error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n"
        f"  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n"
        f"{body}\n}}\n"
    )
    return conf


@dataclass
class Ports:
    h1: tuple[int, int]  # upstream HTTP/1.1
    h2: tuple[int, int]  # upstream h2c (also the gRPC-shaped answers)


def upstream_body(p: Ports) -> str:
    servers = ""
    for port in p.h1:
        servers += f"  server {{ listen 127.0.0.1:{port}; keepalive_requests 100000;\n"
        servers += '    location / { return 200 "hello from upstream\\n"; } }\n'
    for port in p.h2:
        servers += f"  server {{ listen 127.0.0.1:{port} http2; keepalive_requests 100000;\n"
        servers += '    location / { return 200 "hello from upstream\\n"; }\n'
        servers += f"    location {GRPC_PATH} {{ default_type application/grpc;\n"
        servers += "      add_trailer grpc-status 0 always; return 200 ok; } }\n"
    return servers


def raw_haproxy_cfg(case: str, listen: int, p: Ports) -> str:
    h2 = case in ("http2", "grpc_unary")
    mode = "tcp" if case == "tcp" else "http"
    ups = p.h2 if h2 else p.h1
    bind = f"bind 127.0.0.1:{listen}" + (" proto h2" if h2 else "")
    server_opt = " proto h2" if h2 else ""
    return (
        "global\n    master-worker\n\ndefaults\n"
        f"    mode {mode}\n    timeout connect 2s\n    timeout client 60s\n"
        "    timeout server 60s\n\n"
        f"frontend f\n    {bind}\n    default_backend b\n\n"
        "backend b\n    balance roundrobin\n"
        + "".join(f"    server s{i} 127.0.0.1:{port}{server_opt}\n" for i, port in enumerate(ups))
    )


def nginx_proxy_body(case: str, listen: int, p: Ports) -> str:
    h2 = case in ("http2", "grpc_unary")
    ups = p.h2 if case == "grpc_unary" else p.h1  # nginx proxies HTTP/2 to HTTP/1.1
    servers = "".join(f"server 127.0.0.1:{port}; " for port in ups)
    listen_line = f"listen 127.0.0.1:{listen}" + (" http2" if h2 else "") + ";"
    if case == "grpc_unary":
        location = "location / { grpc_pass grpc://u; }"
    else:
        location = (
            "location / { proxy_pass http://u; proxy_http_version 1.1; "
            'proxy_set_header Connection ""; }'
        )
    return (
        f"  upstream u {{ {servers} keepalive 64; }}\n"
        f"  server {{ {listen_line} keepalive_requests 100000; {location} }}\n"
    )


def elastin_snapshot(case: str, listen: int, p: Ports, metrics: int) -> MeshSnapshot:
    protocols: dict[str, Protocol] = {"tcp": "tcp", "http2": "http2", "grpc_unary": "grpc"}
    protocol = protocols.get(case, "http")
    ups = p.h2 if protocol in ("http2", "grpc") else p.h1
    cluster = Cluster(
        "bench.api.port",
        protocol=protocol,
        endpoints=tuple(Endpoint(f"e{i}-port", "127.0.0.1", port) for i, port in enumerate(ups)),
    )
    listener = Listener("web.api", listen, "bench.api.port", protocol=protocol, owner="bench/web")
    return MeshSnapshot(1, "bench", (listener,), (cluster,), metrics_port=metrics)


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    failed: int = 0  # requests that did not get a 2xx: the run does not count


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return 0.0
    v, unit = float(m[1]), m[2]
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def run_wrk(url: str, seconds: float, close: bool) -> Result:
    argv = [which("wrk"), "-t1", "-c20", f"-d{seconds:g}s", "--latency", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    done = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    p50 = _ms(re.search(r"50%\s+(\S+)", out)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"99%\s+(\S+)", out)[1])  # type: ignore[index]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(bad[1]) if bad else 0) + (sum(int(x) for x in errors.groups()) if errors else 0)
    return Result(rps, p50, p99, done, failed)


def run_h2load(url: str, seconds: float, tmp: Path, grpc: bool) -> Result:
    log = tmp / "h2load.log"
    log.unlink(missing_ok=True)
    argv = [which("h2load"), "-c10", "-m10", "-D", f"{seconds:g}", "--log-file", str(log)]
    if grpc:
        frame = tmp / "frame.bin"
        frame.write_bytes(GRPC_FRAME)
        argv += ["-d", str(frame), "-H", "content-type: application/grpc", "-H", "te: trailers"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"finished in ([\d.]+)(ms|s), ([\d.]+) req/s", out)
    ok = re.search(r"(\d+) succeeded, (\d+) failed", out)
    if not m or not ok:
        raise SystemExit(f"h2load did not finish against {url}:\n{out}")
    codes = re.search(r"status codes: (\d+) 2xx", out)
    not_2xx = max(0, int(ok[1]) - int(codes[1])) if codes else 0
    failed = int(ok[2]) + not_2xx
    lat = sorted(int(line.split()[2]) for line in log.read_text().splitlines() if line.strip())
    p50 = lat[len(lat) // 2] / 1000 if lat else 0.0  # microseconds -> ms
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000 if lat else 0.0
    return Result(float(m[3]), p50, p99, int(ok[1]), failed)


def load(case: str, port: int, seconds: float, tmp: Path) -> Result:
    if case in ("http2", "grpc_unary"):
        path = GRPC_PATH if case == "grpc_unary" else "/"
        return run_h2load(f"http://127.0.0.1:{port}{path}", seconds, tmp, case == "grpc_unary")
    return run_wrk(f"http://127.0.0.1:{port}/", seconds, close=case == "http1_new_conn")


# what each Elastin feature costs: the rendered configuration without it (--breakdown)
VARIANTS: dict[str, Callable[[str], bool]] = {
    "elastin": lambda line: True,
    "elastin without access log": lambda line: line.strip() != "log global",
    "elastin without trace context": lambda line: (
        not (line.strip().startswith("http-request") and "trace" in line)
    ),
    "elastin without L7 retries": lambda line: "retry-on" not in line and "l7-retry" not in line,
}


@contextlib.contextmanager
def system(name: str, case: str, p: Ports, tmp: Path) -> Iterator[tuple[int, list[int]]]:
    """Start ``name`` for ``case``; yields (port to load, the proxy's processes)."""
    if name == "direct":
        yield (p.h2[0] if case in ("http2", "grpc_unary") else p.h1[0]), []
        return
    listen = free_port()
    if name == "haproxy":
        cfg = tmp / f"raw-{case}.cfg"
        cfg.write_text(raw_haproxy_cfg(case, listen, p))
        argv = on_cpu(PROXY_CPU, [which("haproxy"), "-W", "-f", str(cfg)])
        with process(argv, tmp / "raw.log") as proc:
            wait_port(listen)
            yield listen, tree_pids(proc.pid)
        return
    if name == "nginx":
        conf = nginx_conf(tmp, f"proxy-{case}", nginx_proxy_body(case, listen, p))
        argv = on_cpu(PROXY_CPU, [which("nginx"), "-c", str(conf)])
        with process(argv, tmp / "nginx-proxy.log") as proc:
            wait_port(listen)
            yield listen, tree_pids(proc.pid)
        return
    keep = VARIANTS[name]
    hp = HaproxyProcess(tmp / f"mesh-{case}", which("haproxy"))
    text = render(elastin_snapshot(case, listen, p, free_port()), hp.paths())
    with started_on(PROXY_CPU):  # as the raw HAProxy: started on the proxy's core
        hp.ensure("\n".join(line for line in text.splitlines() if keep(line)) + "\n")
    # the agent's access log collector drains HAProxy's ring: part of the hop's cost, so
    # it runs on the proxy's core and its cpu is counted with HAProxy's
    collector = [sys.executable, "-m", "elastin.mesh.haproxy.accesslog", str(hp.socket)]
    try:
        with process(
            on_cpu(PROXY_CPU, [*collector, str(hp.dir / "haproxy.log")]), tmp / "c.log"
        ) as c:
            wait_port(listen)
            yield listen, [*tree_pids(hp.master_pid() or 0), c.pid]
    finally:
        hp.stop()


def measure(
    cases: list[str], runs: int, seconds: float, tmp: Path, breakdown: bool = False
) -> tuple[list[Row], list[str]]:
    notes = ["nginx proxies HTTP/2 to its upstreams over HTTP/1.1 (it has no h2c proxy_pass)"]
    p = Ports((free_port(), free_port()), (free_port(), free_port()))
    conf = nginx_conf(tmp, "upstream", upstream_body(p))
    samples: dict[tuple[str, str, str], list[float]] = {}
    with process(on_load_cpu([which("nginx"), "-c", str(conf)]), tmp / "upstream.log"):
        for port in (*p.h1, *p.h2):
            wait_port(port)
        for case in cases:
            systems = [s for s in SYSTEMS if not (s == "nginx" and case == "tcp")]
            if breakdown:
                systems = ["haproxy", *VARIANTS]
            for _ in range(runs):
                rps: dict[str, float] = {}
                cpu_per_req: dict[str, float] = {}
                for name in systems:
                    with system(name, case, p, tmp) as (port, pids):
                        pin(pids, PROXY_CPU)
                        load(case, port, min(1.0, seconds), tmp)  # warm up
                        cpu0 = cpu_seconds(pids)
                        r = load(case, port, seconds, tmp)
                        cpu = cpu_seconds(pids) - cpu0
                        rss = rss_mib(pids)
                    if r.failed:
                        notes.append(
                            f"{case}, {name}: not counted, {r.failed} requests failed "
                            f"({r.requests} succeeded)"
                        )
                        continue  # not a measurement of serving
                    rps[name] = r.rps
                    for metric, value in (
                        ("rps", r.rps),
                        ("p50_ms", r.p50_ms),
                        ("p99_ms", r.p99_ms),
                    ):
                        samples.setdefault((case, name, metric), []).append(value)
                    if pids:
                        per_req = cpu * 1e6 / max(1, r.requests)
                        cpu_per_req[name] = per_req
                        samples.setdefault((case, name, "proxy_cpu_us_per_req"), []).append(per_req)
                        samples.setdefault((case, name, "rss_mib"), []).append(rss)
                for name in VARIANTS:
                    if rps.get("haproxy") and rps.get(name):
                        samples.setdefault((case, name, "rps_ratio_vs_haproxy"), []).append(
                            rps[name] / rps["haproxy"]
                        )
                    if cpu_per_req.get("haproxy") and cpu_per_req.get(name):
                        samples.setdefault((case, name, "cpu_ratio_vs_haproxy"), []).append(
                            cpu_per_req[name] / cpu_per_req["haproxy"]
                        )
            shown = ", ".join(f"{k} {v:,.0f} rps" for k, v in rps.items())
            print(f"{case}: {shown}", file=sys.stderr)
    notes.append("nginx here has no stream module (libnginx-mod-stream): no nginx row for tcp")
    rows = [Row(case, name, metric, tuple(v)) for (case, name, metric), v in samples.items()]
    return rows, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--quick", action="store_true", help="one run of 1 s per case")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="raw HAProxy against Elastin's configuration with and without each feature",
    )
    args = ap.parse_args(argv)
    if haproxy_binary() is None:
        print("haproxy is not installed (make setup installs it)", file=sys.stderr)
        return 1
    runs, seconds = (1, 1.0) if args.quick else (args.runs, args.seconds)
    with tempfile.TemporaryDirectory(prefix="elastin-proxy-") as d:
        rows, notes = measure(args.cases.split(","), runs, seconds, Path(d), args.breakdown)
    emit("proxy", rows, as_json=args.json, title="one mesh hop vs raw HAProxy, nginx and direct")
    if not args.json:
        for n in notes:
            print(f"note: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

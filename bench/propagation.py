"""How fast an endpoint change reaches every proxy: from the store to 1,000 watchers, and to a
real HAProxy serving it.

A real ``elastin server`` runs in its own process. This script plays one agent (node
``bench-node``): it registers and reports the instances the scheduler placed on it as running
with ports; a process of its own (this script with ``--agent``, as an agent is on its node)
heartbeats and runs the agent's own mesh manager (``elastin.agent.mesh``) with a real
HAProxy. Next to it, N simulated agents follow the pushed snapshot stream an agent follows
(``GET /v1/nodes/{id}/mesh/stream``), or hold the blocking query tools use
(``GET /v1/nodes/{id}/mesh?index=&wait=``), on one event loop.

Each change flips one ``api`` endpoint's readiness (an agent's health report,
``POST /v1/allocations/{id}/status``) and measures, from just before the report is sent:

* ``all_watchers_ms`` — until every simulated agent has a snapshot with the new readiness;
* ``haproxy_ms`` — until the real HAProxy has the server in the new state (runtime API,
  ``show servers state``), i.e. serves the change.

Beside them, ``server_cpu_ms_per_change``: the server process's cpu time (user + system)
while a case's changes ran, divided by the changes: the work one change costs the server with
N agents following, which on a busy machine is what stretches the tail. The progress lines
also print this process's own cpu per change (the simulated agents and the HAProxy poller):
on a real cluster each agent reads on its own node, here one process reads for all of them.

Cases: 1, 100 and 1,000 watchers; p50 and p99 over the changes. The target in issue #3 is
p99 <= 100 ms (Istio publishes 1.5-4.5 s convergence). There is no peer process to run side
by side: the figure is compared with the target and that published number. ``--runs N``
repeats the whole measurement with a new server each time and prints each run's figures and
the load average (the machine's other work) as it goes; the table shows the median of the
runs, min-max beside.

Usage: ``python bench/propagation.py [--json] [--runs N] [--changes N] [--watchers 1,100,1000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, elastin_process, emit
from elastin.agent.mesh import MeshManager, local_haproxy
from elastin.client.http import AsyncClient
from elastin.mesh.haproxy.process import HaproxyProcess, haproxy_binary
from elastin.model.cluster import Node
from elastin.model.resources import Resources

NODE = "bench-node"
REPLICAS = 4
SPEC = f"""
app: prop
services:
  api:
    command: ["true"]
    ports: {{http: 0}}
    replicas: {REPLICAS}
    health: {{http: /, interval: 1s}}
    resources: {{cpu: 10m, memory: 16Mi}}
  web:
    command: ["true"]
    upstreams: [api]
    resources: {{cpu: 10m, memory: 16Mi}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(tmp: Path) -> Iterator[tuple[str, str, int]]:
    data = tmp / "data"
    env = {**os.environ, "ELASTIN_DATA_DIR": str(data)}
    env.pop("ELASTIN_ADDR", None)
    command = ("server", "--port", "0")
    with elastin_process(command, data, env, tmp / "server.log") as (proc, info):
        yield str(info["url"]), (data / "token").read_text().strip(), proc.pid


@contextlib.contextmanager
def agent(url: str, token: str, mesh_dir: Path) -> Iterator[None]:
    """The bench node's agent parts (heartbeats, the mesh manager and its HAProxy) in a
    process of their own: on one event loop with 1,000 simulated agents, the mesh manager
    read its stream among theirs and timed this process, not the mesh."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--agent", url, token, str(mesh_dir)],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def run_agent(url: str, token: str, mesh_dir: Path) -> None:
    """``--agent``: heartbeat and run the mesh manager until SIGTERM."""
    client = AsyncClient(url, token)
    mesh = MeshManager(lambda: client, NODE, mesh_dir, local_haproxy(mesh_dir))

    async def heartbeat() -> None:
        while True:
            with contextlib.suppress(Exception):
                await client.heartbeat(NODE, {}, None)
            await asyncio.sleep(5)

    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        async with asyncio.TaskGroup() as tg:
            tg.create_task(heartbeat())
            tg.create_task(mesh.run())


class Bench:
    def __init__(self, url: str, token: str, mesh_dir: Path) -> None:
        self.url, self.token = url, token
        self.client = AsyncClient(url, token)
        self.proxy = local_haproxy(mesh_dir)
        self.target: tuple[str, bool] | None = None  # (endpoint id, ready) being waited for
        self.seen: dict[int, float] = {}  # watcher -> when it saw the target
        self.all_seen = asyncio.Event()
        self.watchers = 0

    async def setup(self) -> list[str]:
        node = Node(NODE, NODE, capacity=Resources(64_000, 64 << 30, 100 << 30))
        await self.client.register(node)
        sync = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"})
        sync.post("/v1/apps", json={"spec": SPEC, "file": "prop.yaml", "base_dir": "."})
        deadline = time.monotonic() + 30
        allocs: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(allocs) < REPLICAS + 1:
            allocs = sync.get("/v1/allocations", params={"app": "prop"}).json()
            await asyncio.sleep(0.1)
        sync.close()
        if len(allocs) < REPLICAS + 1:
            raise SystemExit("the scheduler did not place the bench's instances")
        api = []
        for a in allocs:
            ports = (
                {"http": free_port()} if a["workload"] == "api" else {"upstream.api": free_port()}
            )
            for status in ("starting", "running"):
                await self.client.alloc_status(
                    a["id"], status=status, ports=list(ports.items()), healthy=True
                )
            if a["workload"] == "api":
                api.append(a["id"])
        return api

    async def watcher(self, i: int, mode: str) -> None:
        """One simulated agent, doing what the agent does: follow the snapshot stream and
        acknowledge each version (``stream``), or hold the blocking query (``poll``). Raw
        HTTP/1.1 on asyncio: an HTTP client library's pool would measure itself at 1,000
        connections, not the server. The stream is read by a plain ``asyncio.Protocol``
        (``_StreamReader``): a task and a ``StreamReader`` per agent woke twice per line, and
        once the server's fan-out got cheaper this process's reading was most of the time."""
        host, _, port = self.url.removeprefix("http://").partition(":")
        auth = f"Host: {host}\r\nAuthorization: Bearer {self.token}\r\n"
        if mode == "stream":
            acks: asyncio.Queue[int] = asyncio.Queue()
            transport, _ = await asyncio.get_running_loop().create_connection(
                lambda: _StreamReader(lambda line, t: self.on_line(i, line, t, acks)),
                host,
                int(port),
            )
            try:
                transport.write(f"GET /v1/nodes/w{i}/mesh/stream HTTP/1.1\r\n{auth}\r\n".encode())
                ack_r, ack_w = await asyncio.open_connection(host, int(port))
                try:
                    await self.acks(i, auth, acks, ack_r, ack_w)
                finally:
                    ack_w.close()
            finally:
                transport.close()
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            index = 0
            while True:
                query = f"index={index}&wait=30"
                writer.write(f"GET /v1/nodes/w{i}/mesh?{query} HTTP/1.1\r\n{auth}\r\n".encode())
                await writer.drain()
                snap = json.loads(await _body(reader))
                self.saw(i, snap, time.perf_counter())
                index = snap["version"]
        finally:
            writer.close()

    async def acks(
        self,
        i: int,
        auth: str,
        versions: asyncio.Queue[int],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Watcher ``i`` acknowledges the versions that ask for it, as the agent does (only
        while a drain waits: ``ack_wanted``)."""
        while True:
            version = await versions.get()
            writer.write(
                f"POST /v1/nodes/w{i}/mesh/ack?version={version} "
                f"HTTP/1.1\r\n{auth}Content-Length: 0\r\n\r\n".encode()
            )
            await writer.drain()
            await _body(reader)

    def on_line(self, i: int, line: bytes, t: float, acks: asyncio.Queue[int]) -> None:
        """A line of watcher ``i``'s stream arrived at ``t``."""
        self.saw_bytes(i, line, t)
        if b'"ack_wanted": true' in line:
            acks.put_nowait(json.loads(line)["version"])

    def saw_bytes(self, i: int, line: bytes, t: float) -> None:
        """``saw`` on the snapshot as it arrived: find the endpoint and its readiness in the
        bytes. One process stands for 1,000 agents here; decoding 1,000 snapshots one after
        the other would time this process, where each agent decodes its own, side by side."""
        target = self.target
        if target is None or i in self.seen:
            return
        at = line.find(f'"id": "{target[0]}"'.encode())
        ready = line.find(b'"ready": ', at)
        want = b"true" if target[1] else b"false"
        if at >= 0 and ready >= 0 and line.startswith(want, ready + 9):
            self.seen[i] = t
            if len(self.seen) == self.watchers:
                self.all_seen.set()

    def saw(self, i: int, snap: dict[str, Any], t: float) -> None:
        target = self.target
        if target is None or i in self.seen:
            return
        for c in snap["clusters"]:
            for e in c["endpoints"]:
                if e["id"] == target[0] and e["ready"] == target[1]:
                    self.seen[i] = t
                    if len(self.seen) == self.watchers:
                        self.all_seen.set()

    def haproxy_state(self, endpoint: str) -> bool | None:
        """Whether HAProxy has ``endpoint`` ready (not in maintenance); None if unknown."""
        if self.proxy is None:
            return None
        try:
            text = self.proxy.send("show servers state c_prop.api.http")
        except Exception:
            return None
        for line in text.splitlines():
            cols = line.split()
            if len(cols) > 6 and cols[3] == f"e_{endpoint}":
                return not int(cols[6]) & 0x01  # srv_admin_state: FMAINT
        return None

    async def change(self, alloc: str, ready: bool) -> tuple[float, float]:
        endpoint = f"{alloc}-http"
        self.seen.clear()
        self.all_seen.clear()
        self.target = (endpoint, ready)
        t0 = time.perf_counter()
        deadline = t0 + 10
        served: list[float] = []

        def poll_haproxy() -> None:  # its own thread: the event loop is the watchers'
            while time.perf_counter() < deadline:
                if self.haproxy_state(endpoint) == ready:
                    served.append(time.perf_counter())
                    return
                time.sleep(0.001)

        poller = threading.Thread(target=poll_haproxy)
        poller.start()
        await self.client.alloc_status(alloc, healthy=ready)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_seen.wait(), max(0.0, deadline - time.perf_counter()))
        await asyncio.to_thread(poller.join)
        if not served or not self.all_seen.is_set():
            raise SystemExit(f"a change did not arrive within 10 s ({len(self.seen)} watchers)")
        return (max(self.seen.values()) - t0) * 1000, (served[0] - t0) * 1000


class _StreamReader(asyncio.Protocol):
    """Reads a chunked NDJSON answer as it arrives; ``on_line(line, t)`` for each non-empty
    line, ``t`` when the bytes that completed it were read."""

    def __init__(self, on_line: Callable[[bytes, float], None]) -> None:
        self.on_line = on_line
        self.raw = b""  # what was read and not parsed yet
        self.head = True  # the answer's head is not read yet
        self.line = b""  # the start of a line whose end has not come

    def data_received(self, data: bytes) -> None:
        t = time.perf_counter()
        raw = self.raw + data
        if self.head:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                self.raw = raw
                return
            raw, self.head = raw[end + 4 :], False
        text = self.line
        while True:  # chunked encoding: size line, data, CRLF
            eol = raw.find(b"\r\n")
            if eol < 0:
                break
            size = int(raw[:eol], 16)
            if len(raw) < eol + 2 + size + 2:
                break
            text += raw[eol + 2 : eol + 2 + size]
            raw = raw[eol + 2 + size + 2 :]
        self.raw = raw
        *lines, self.line = text.split(b"\n")
        for line in lines:
            if line:
                self.on_line(line, t)


async def _headers(reader: asyncio.StreamReader) -> int:
    """Read a response's head; its Content-Length (0 when chunked or absent)."""
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return length


async def _body(reader: asyncio.StreamReader) -> bytes:
    return await reader.readexactly(await _headers(reader))


def cpu_seconds(pid: int) -> float:
    """User + system cpu time of process ``pid`` so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def measure(
    url: str, token: str, pid: int, tmp: Path, cases: list[int], modes: list[str], changes: int
) -> list[Row]:
    b = Bench(url, token, tmp / "mesh")
    api = await b.setup()
    rows: list[Row] = []
    with agent(url, token, tmp / "mesh"):
        await measure_cases(b, api, pid, cases, modes, changes, rows)
    return rows


async def measure_cases(
    b: Bench,
    api: list[str],
    pid: int,
    cases: list[int],
    modes: list[str],
    changes: int,
    rows: list[Row],
) -> None:
    async with asyncio.TaskGroup() as tg:
        deadline = time.monotonic() + 30
        while b.haproxy_state(f"{api[0]}-http") is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if b.haproxy_state(f"{api[0]}-http") is None:
            raise SystemExit("HAProxy did not start with the bench's listener")
        for mode in modes:
            watchers: list[asyncio.Task[None]] = []
            for n in cases:
                while len(watchers) < n:
                    watchers.append(tg.create_task(b.watcher(len(watchers), mode)))
                b.watchers = n
                await asyncio.sleep(1.0 + n / 500)  # every watcher is connected and current
                watch_ms: list[float] = []
                proxy_ms: list[float] = []
                cpu0, own0 = cpu_seconds(pid), cpu_seconds(os.getpid())
                for k in range(changes):
                    alloc = api[k % len(api)]
                    for ready in (False, True):
                        w, p = await b.change(alloc, ready)
                        watch_ms.append(w)
                        proxy_ms.append(p)
                        await asyncio.sleep(0.05)
                cpu_ms = (cpu_seconds(pid) - cpu0) * 1000 / len(watch_ms)
                own_ms = (cpu_seconds(os.getpid()) - own0) * 1000 / len(watch_ms)
                what = "pushed stream" if mode == "stream" else "blocking query"
                case = f"readiness change, {n} watchers, {what}"
                for metric, values in (("all_watchers_ms", watch_ms), ("haproxy_ms", proxy_ms)):
                    rows.append(Row(case, "elastin", f"{metric}_p50", (pct(values, 50),)))
                    rows.append(Row(case, "elastin", f"{metric}_p99", (pct(values, 99),)))
                rows.append(Row(case, "elastin", "server_cpu_ms_per_change", (cpu_ms,)))
                print(
                    f"{mode:>6} {n:>5} watchers: all p50 {pct(watch_ms, 50):6.1f} ms, p99 "
                    f"{pct(watch_ms, 99):6.1f} ms; haproxy p50 {pct(proxy_ms, 50):6.1f} ms, "
                    f"p99 {pct(proxy_ms, 99):6.1f} ms; cpu per change: server {cpu_ms:5.1f} ms, "
                    f"watchers {own_ms:5.1f} ms; "
                    f"load {os.getloadavg()[0]:.2f}",
                    file=sys.stderr,
                )
            for t in watchers:
                t.cancel()
            await asyncio.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--agent"]:  # the bench node's agent process (``agent``)
        asyncio.run(run_agent(argv[1], argv[2], Path(argv[3])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--runs", type=int, default=1, help="whole measurements, each with a new server"
    )
    ap.add_argument("--changes", type=int, default=25, help="changes per case (x2: down, up)")
    ap.add_argument("--watchers", default="1,100,1000", help="comma-separated watcher counts")
    ap.add_argument(
        "--modes", default="stream,poll", help="how watchers follow: stream (agents), poll"
    )
    args = ap.parse_args(argv)
    if haproxy_binary() is None:
        print("haproxy is not installed (make setup installs it)", file=sys.stderr)
        return 1
    cases = sorted(int(x) for x in args.watchers.split(","))
    samples: dict[tuple[str, str, str], list[float]] = {}
    for run in range(max(1, args.runs)):
        if args.runs > 1:
            print(f"run {run + 1} of {args.runs}", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="elastin-prop-") as d:
            tmp = Path(d)
            with server(tmp) as (url, token, pid):
                try:
                    rows = asyncio.run(
                        measure(url, token, pid, tmp, cases, args.modes.split(","), args.changes)
                    )
                finally:  # the mesh manager's HAProxy runs detached, as an agent's does
                    HaproxyProcess(tmp / "mesh", str(haproxy_binary())).stop()
        for r in rows:
            samples.setdefault((r.case, r.system, r.metric), []).extend(r.samples)
    emit(
        "propagation",
        [Row(*key, tuple(values)) for key, values in samples.items()],
        as_json=args.json,
        title="endpoint change -> every watcher / a real HAProxy (p50, p99; target p99 <= 100 ms)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Graceful drain, end to end (a real server, agent, tasks and HAProxy): an instance being
stopped leaves every proxy first, what is in flight to it finishes (the drain waits for it
at most ``stop_grace``), and only then it gets SIGTERM, its ``stop_grace`` and SIGKILL — for
a gRPC server-streaming call in flight when its replica is scaled away, for a stream that
outlasts the drain's wait (it gets the grace period), for an HTTP request in flight when its
instance is stopped or replaced, and for one the proxy's old worker still carries after a
reload meanwhile. docs/mesh.md, "Draining"."""

from __future__ import annotations

import json
import os
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from elastin.mesh.haproxy.process import haproxy_binary

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
    pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed"),
]

PY = sys.executable

# A gRPC server (generic handlers on raw bytes, no codegen): ``/test.Echo/CountTo`` streams
# ``<allocation id>:<i>`` for i < n, one message every ``step`` seconds (request "n step").
# With GRACEFUL=1 it stops on SIGTERM as a gRPC server should: no new call, the calls in flight
# finish (``server.stop(grace)``); otherwise SIGTERM's default action ends it at once.
RPC = """\
import os, signal, threading, time
from concurrent.futures import ThreadPoolExecutor
import grpc

ME = os.environ["ELASTIN_ALLOC_ID"]

def count_to(request, context):
    n, step = request.decode().split()
    for i in range(int(n)):
        yield f"{ME}:{i}".encode()
        time.sleep(float(step))

server = grpc.server(ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "test.Echo", {"CountTo": grpc.unary_stream_rpc_method_handler(count_to)}),))
server.add_insecure_port("127.0.0.1:" + os.environ["PORT"])
server.start()
if os.environ.get("GRACEFUL") == "1":
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: (server.stop(grace=30).wait(), done.set()))
    done.wait()
else:
    server.wait_for_termination()
"""


def rpc_spec(replicas: int, *, graceful: bool, stop_grace: str = "20s") -> str:
    return f"""
app: g
services:
  rpc:
    command: ["{PY}", "rpc.py"]
    env: {{GRACEFUL: "{1 if graceful else 0}"}}
    ports: {{grpc: {{port: 0, protocol: grpc}}}}
    replicas: {replicas}
    stop_grace: {stop_grace}
    resources: {{cpu: 100m, memory: 96Mi}}
    health: {{tcp: grpc, interval: 1s}}
  web:
    command: ["{PY}", "-c", "import time; time.sleep(600)"]
    upstreams: [rpc]
    resources: {{cpu: 50m, memory: 32Mi}}
"""


def start_rpc(
    harness: Any, graceful: bool, stop_grace: str = "20s"
) -> tuple[Any, Path, grpc.Channel, str]:
    """The application with two rpc replicas; a channel to ``web``'s upstream listener for
    rpc (through the node's HAProxy) and the id of the replica a scale to one stops."""
    h = harness.start()
    (harness.tmp / "rpc.py").write_text(RPC)
    path = harness.write_spec("g.yaml", rpc_spec(2, graceful=graceful, stop_grace=stop_grace))
    h.cli("apply", str(path), "--wait", check=True)
    web = h.wait_for(lambda: h.running("g", "web"), 30, "web running")[0]
    rpcs = h.wait_for(lambda: len(h.running("g", "rpc")) == 2 and h.running("g", "rpc"), 30, "rpc")
    (leaving,) = [a.id for a in rpcs if a.index == 1]
    port = dict(web.ports)["upstream.rpc"]
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)])
    grpc.channel_ready_future(channel).result(timeout=30)
    return h, path, channel, leaving


def stream_on(channel: grpc.Channel, alloc_id: str, request: bytes) -> tuple[Any, list[str]]:
    """A ``CountTo`` call whose first message came from ``alloc_id`` (the mesh balances each
    call: calls that landed on the other replica are cancelled), and the messages so far."""
    count_to: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
        "/test.Echo/CountTo"
    )
    for _ in range(40):
        call = count_to(request, timeout=120)
        first = next(call).decode()
        if first.startswith(alloc_id + ":"):
            return call, [first]
        call.cancel()
    raise AssertionError(f"no call reached {alloc_id} in 40 tries")


def finish(call: Any, got: list[str]) -> tuple[list[str], grpc.StatusCode, str]:
    """Read the rest of the call on a thread of its own; its messages, status and details."""
    out: dict[str, Any] = {}

    def read() -> None:
        try:
            got.extend(m.decode() for m in call)
            out["status"], out["details"] = grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            out["status"], out["details"] = e.code(), e.details()

    t = threading.Thread(target=read)
    t.start()
    t.join(120)
    assert not t.is_alive(), "the call did not end within 120 s"
    return got, out["status"], out["details"]


def events_of(h: Any, alloc_id: str) -> list[dict[str, Any]]:
    """The events about an allocation (their subject: its name and short id)."""
    events = json.loads(h.cli("events", "--json", check=True).stdout)
    return [e for e in events if alloc_id.startswith(e["subject"].split()[-1])]


def test_a_grpc_stream_in_flight_when_its_replica_is_scaled_away_completes(harness: Any) -> None:
    # SIGTERM ends this server at once: the stream completes only because the agent waits for
    # it before signalling (the endpoint has left every proxy meanwhile: no new call reaches it)
    h, path, channel, leaving = start_rpc(harness, graceful=False)
    with channel:
        call, got = stream_on(channel, leaving, b"10 0.3")  # about 3 s
        path.write_text(rpc_spec(1, graceful=False))
        h.cli("apply", str(path), check=True)
        got, status, details = finish(call, got)
        assert status == grpc.StatusCode.OK, (status, details, got)
        assert got == [f"{leaving}:{i}" for i in range(10)]
        h.wait_for(lambda: len(h.running("g", "rpc")) == 1, 30, "scaled down to one")
        # new calls go to the replica that stays
        count_to: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
            "/test.Echo/CountTo"
        )
        for _ in range(4):
            assert not [m for m in count_to(b"1 0", timeout=30) if m.decode().startswith(leaving)]
    drained = [e["message"] for e in events_of(h, leaving) if e["type"] == "alloc.draining"]
    assert drained == ["out of every proxy, no request in flight; stopping"], drained


def test_a_grpc_stream_longer_than_the_drain_wait_gets_the_grace_period(harness: Any) -> None:
    # the stream (about 8 s) outlasts the drain's wait (stop_grace, 5 s): SIGTERM comes while
    # it is in flight, and the server, stopping gracefully within stop_grace, finishes it
    h, path, channel, leaving = start_rpc(harness, graceful=True, stop_grace="5s")
    with channel:
        call, got = stream_on(channel, leaving, b"16 0.5")
        path.write_text(rpc_spec(1, graceful=True, stop_grace="5s"))
        h.cli("apply", str(path), check=True)
        got, status, details = finish(call, got)
        assert status == grpc.StatusCode.OK, (status, details, got)
        assert got == [f"{leaving}:{i}" for i in range(16)]
    h.wait_for(
        lambda: any(a.id == leaving and a.status == "stopped" for a in h.allocs("g")),
        60,
        "the scaled-away replica stopped",
    )
    # the drain's wait ran out with the stream in flight; SIGTERM came, and the server stopped
    # on its own within stop_grace (not "killed by signal 9") once the stream had finished
    drained = [e["message"] for e in events_of(h, leaving) if e["type"] == "alloc.draining"]
    assert drained == ["out of every proxy; 1 request(s) still in flight after 5s"], drained
    stopped = [e["message"] for e in events_of(h, leaving) if e["type"] == "alloc.stopped"]
    assert "stopped (exited with code 0)" in stopped, stopped


# An HTTP service whose POST answers after the seconds its body says, with the instance's id
# (and marks its HOME when a request arrives). SIGTERM's default action ends it at once: a
# request in flight when it is stopped is answered only because the agent waits for it before
# signalling.
SLOW = (
    "import http.server, os, time\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_POST(self):\n"
    "        open(os.path.join(os.environ['HOME'], 'got-a-request'), 'w').close()\n"
    "        time.sleep(float(self.rfile.read(int(self.headers['Content-Length']))))\n"
    "        b = os.environ['ELASTIN_ALLOC_ID'].encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(b)))\n"
    "        self.end_headers(); self.wfile.write(b)\n"
    "    do_GET = lambda self: (self.send_response(200), self.end_headers())\n"
    "    def log_message(self, *a): pass\n"
    "http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H)"
    ".serve_forever()\n"
)

SLOW_SPEC = f"""
app: s
services:
  api:
    command: ["{PY}", "-c", {json.dumps(SLOW)}]
    ports: {{http: 0}}
    resources: {{cpu: 100m, memory: 48Mi}}
    health: {{http: /, interval: 1s}}
    update: {{min_healthy_time: 1s}}
  web:
    command: ["{PY}", "-c", "import time; time.sleep(600)"]
    upstreams: [api]
    resources: {{cpu: 50m, memory: 32Mi}}
"""


@pytest.mark.parametrize("how", [("stop", "api"), ("restart", "api", "--no-wait")])
def test_a_request_in_flight_when_its_instance_is_stopped_or_replaced_is_answered(
    harness: Any, how: tuple[str, ...]
) -> None:
    h = harness.start()
    h.cli("apply", str(harness.write_spec("s.yaml", SLOW_SPEC)), "--wait", check=True)
    web = h.wait_for(lambda: h.running("s", "web"), 30, "web running")[0]
    (old,) = h.wait_for(lambda: h.running("s", "api"), 30, "api running")
    url = f"http://127.0.0.1:{dict(web.ports)['upstream.api']}/"
    answer: dict[str, Any] = {}

    def post() -> None:  # not idempotent: the mesh never retries it once sent
        req = urllib.request.Request(url, data=b"3", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                answer["status"], answer["body"] = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            answer["status"], answer["body"] = e.code, e.read().decode(errors="replace")
        except OSError as e:
            answer["status"], answer["body"] = 0, str(e)

    t = threading.Thread(target=post)
    t.start()
    got = h.data_dir / "allocs" / old.id / "local" / "got-a-request"
    h.wait_for(got.exists, 30, "the request reached the instance")
    h.cli(*how, check=True)
    t.join(60)
    assert answer == {"status": 200, "body": old.id}
    h.wait_for(
        lambda: any(a.id == old.id and a.status == "stopped" for a in h.allocs("s")),
        60,
        "the old instance stopped",
    )
    drained = [e["message"] for e in events_of(h, old.id) if e["type"] == "alloc.draining"]
    assert drained == ["out of every proxy, no request in flight; stopping"], drained


# An HTTP service whose POST is answered (with the instance's id) only once the file
# ``release`` is in its HOME: the test decides when the request ends. SIGTERM ends it at once.
HELD = (
    "import http.server, os, time\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_POST(self):\n"
    "        self.rfile.read(int(self.headers['Content-Length']))\n"
    "        open(os.path.join(os.environ['HOME'], 'got-a-request'), 'w').close()\n"
    "        while not os.path.exists(os.path.join(os.environ['HOME'], 'release')):\n"
    "            time.sleep(0.05)\n"
    "        b = os.environ['ELASTIN_ALLOC_ID'].encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(b)))\n"
    "        self.end_headers(); self.wfile.write(b)\n"
    "    do_GET = lambda self: (self.send_response(200), self.end_headers())\n"
    "    def log_message(self, *a): pass\n"
    "http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H)"
    ".serve_forever()\n"
)

HELD_SPEC = f"""
app: s
services:
  api:
    command: ["{PY}", "-c", {json.dumps(HELD)}]
    ports: {{http: 0}}
    stop_grace: 60s
    resources: {{cpu: 100m, memory: 48Mi}}
    health: {{http: /, interval: 1s}}
  web:
    command: ["{PY}", "-c", "import time; time.sleep(600)"]
    upstreams: [api]
    resources: {{cpu: 50m, memory: 32Mi}}
"""

# another application on the node: its caller's listener is a structural change (a reload)
OTHER_SPEC = f"""
app: t
services:
  other:
    command: ["{PY}", "-c", "import time; time.sleep(600)"]
    ports: {{http: 0}}
    resources: {{cpu: 50m, memory: 32Mi}}
  caller:
    command: ["{PY}", "-c", "import time; time.sleep(600)"]
    upstreams: [other]
    resources: {{cpu: 50m, memory: 32Mi}}
"""


def test_a_request_the_old_worker_carries_across_a_reload_is_answered(harness: Any) -> None:
    # the drain waits for the request on every HAProxy worker: after the reload the new
    # worker never had the instance, the old one still carries the request to it
    h = harness.start()
    h.cli("apply", str(harness.write_spec("s.yaml", HELD_SPEC)), "--wait", check=True)
    web = h.wait_for(lambda: h.running("s", "web"), 30, "web running")[0]
    (old,) = h.wait_for(lambda: h.running("s", "api"), 30, "api running")
    url = f"http://127.0.0.1:{dict(web.ports)['upstream.api']}/"
    home = h.data_dir / "allocs" / old.id / "local"
    proxy_log = h.data_dir / "mesh" / "haproxy.log"
    answer: dict[str, Any] = {}

    def post() -> None:  # not idempotent: the mesh never retries it once sent
        req = urllib.request.Request(url, data=b"-", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                answer["status"], answer["body"] = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            answer["status"], answer["body"] = e.code, e.read().decode(errors="replace")
        except OSError as e:
            answer["status"], answer["body"] = 0, str(e)

    t = threading.Thread(target=post)
    t.start()
    try:
        h.wait_for((home / "got-a-request").exists, 30, "the request reached the instance")
        workers = proxy_log.read_text(errors="replace").count("New worker")
        h.cli("stop", "api", check=True)
        h.cli("apply", str(harness.write_spec("t.yaml", OTHER_SPEC)), check=True)
        h.wait_for(
            lambda: proxy_log.read_text(errors="replace").count("New worker") > workers,
            60,
            "the node's proxy reloaded while the request is in flight",
        )
        h.wait_for(lambda: h.running("t", "caller"), 60, "the other application's caller")
        assert not answer, answer  # still in flight: the instance was not signalled
    finally:
        (home / "release").touch()
        t.join(60)
    assert answer == {"status": 200, "body": old.id}
    h.wait_for(
        lambda: any(a.id == old.id and a.status == "stopped" for a in h.allocs("s")),
        60,
        "the old instance stopped",
    )
    drained = [e["message"] for e in events_of(h, old.id) if e["type"] == "alloc.draining"]
    assert drained == ["out of every proxy, no request in flight; stopping"], drained

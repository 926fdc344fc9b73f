"""The access log as the agent collects it from HAProxy's ring (``AccessLogCollector``),
against a real HAProxy: every request's line arrives once — across a reload with a request
in flight, and across a restart of the collector (an agent restart), also when HAProxy was
reloaded meanwhile and its stream never pauses — and a long path still gives one valid JSON
line."""

from __future__ import annotations

import contextlib
import http.server
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from meshproxy import MeshProxy, free_port, get, http_backend, needs_haproxy

from elastin.mesh.model import Cluster, Endpoint, Listener, MeshSnapshot, Timeouts

pytestmark = [pytest.mark.integration, needs_haproxy]
Start = Callable[[MeshSnapshot], MeshProxy]


def one_service(port: int, listen: int, version: int = 1) -> MeshSnapshot:
    cluster = Cluster(
        "shop.web.http",
        endpoints=(Endpoint("w1-http", "127.0.0.1", port),),
        timeouts=Timeouts(request=10),
        access_log_sample=1.0,  # every request (the default logs abnormal ones and a sample)
    )
    return MeshSnapshot(version, "n1", (Listener("c.web", listen, "shop.web.http"),), (cluster,))


def paths(lines: list[dict[str, object]]) -> Counter[object]:
    return Counter(x["path"] for x in lines)


def test_a_request_in_flight_across_a_reload_is_logged_once(mesh_proxy: Start) -> None:
    def handler(h: http.server.BaseHTTPRequestHandler) -> tuple[int, bytes]:
        if h.path == "/slow":
            time.sleep(1.5)
        return 200, b"ok"

    with http_backend("web", handler) as port:
        listen = free_port()
        proxy = mesh_proxy(one_service(port, listen))
        for i in range(20):
            assert get(proxy.url(listen, f"/before{i}"))[0] == 200
        slow = threading.Thread(target=get, args=(proxy.url(listen, "/slow"),))
        slow.start()
        time.sleep(0.3)
        # a structural change: a new worker with a new, empty ring; the old worker logs
        # /slow when it ends
        snap = one_service(port, listen, 2)
        proxy.apply(replace(snap, listeners=(replace(snap.listeners[0], owner="shop/c"),)))
        assert proxy.reloads == 1
        for i in range(20):
            assert get(proxy.url(listen, f"/after{i}"))[0] == 200
        slow.join(10)
        lines = proxy.access_log(41, timeout=20)  # the old worker's last line comes late
    seen = paths(lines)
    assert seen["/slow"] == 1
    assert all(seen[f"/before{i}"] == 1 and seen[f"/after{i}"] == 1 for i in range(20)), seen
    assert len(lines) == 41


def test_lines_made_while_the_collector_was_away_arrive_once(mesh_proxy: Start) -> None:
    with http_backend("web") as port:
        listen = free_port()
        proxy = mesh_proxy(one_service(port, listen))
        for i in range(10):
            get(proxy.url(listen, f"/a{i}"))
        assert len(proxy.access_log(10)) == 10
        proxy.collector.terminate()  # the agent stops; HAProxy goes on serving and logging
        proxy.collector.wait(10)
        for i in range(10):
            get(proxy.url(listen, f"/b{i}"))
        proxy.collector = proxy.start_collector()
        proxy.access_log(20)
        for i in range(5):
            get(proxy.url(listen, f"/c{i}"))
        lines = proxy.access_log(25)
    assert sorted(paths(lines).values()) == [1] * 25, paths(lines)


def test_a_long_path_is_one_valid_line(mesh_proxy: Start) -> None:
    with http_backend("web") as port:
        listen = free_port()
        proxy = mesh_proxy(one_service(port, listen))
        path = "/" + "a/" * 1000  # logged JSON-escaped: each / becomes \/
        with urllib.request.urlopen(proxy.url(listen, path), timeout=5) as r:
            assert r.status == 200
        get(proxy.url(listen, "/next"))
        lines = proxy.access_log(2)
    assert [x["path"] for x in lines][-1] == "/next"
    assert str(lines[0]["path"]).startswith("/a/a/")  # whole, or cut at 1,024 bytes


def test_a_follower_reconnecting_to_the_same_worker_writes_nothing_twice(
    mesh_proxy: Start,
) -> None:
    with http_backend("web") as port:
        listen = free_port()
        proxy = mesh_proxy(one_service(port, listen))
        for i in range(5):
            get(proxy.url(listen, f"/a{i}"))
        proxy.access_log(5)
        # an agent restart with nothing new: the new follower skips the whole replay
        proxy.collector.terminate()
        proxy.collector.wait(10)
        proxy.collector = proxy.start_collector()
        time.sleep(1.5)
        for _ in range(2):
            # its CLI session ends (as HAProxy's idle timeout ends it): it comes back to the
            # same worker and is sent the whole ring again
            sessions = proxy.send("show sess")
            followers = [x.split(":")[0] for x in sessions.splitlines() if "fe=GLOBAL" in x]
            for sid in followers:
                with contextlib.suppress(Exception):
                    proxy.send(f"shutdown session {sid}")
            time.sleep(2.5)
        get(proxy.url(listen, "/b"))
        proxy.access_log(6)
        time.sleep(0.5)  # time for a line to come twice
        lines = proxy.access_log(6)
    assert sorted(paths(lines).values()) == [1] * 6, paths(lines)


def test_a_collector_restarted_after_a_reload_writes_nothing_twice(mesh_proxy: Start) -> None:
    with http_backend("web") as port:
        listen = free_port()
        proxy = mesh_proxy(one_service(port, listen))
        for i in range(5):
            get(proxy.url(listen, f"/a{i}"))
        proxy.access_log(5)
        snap = one_service(port, listen, 2)
        proxy.apply(replace(snap, listeners=(replace(snap.listeners[0], owner="shop/c"),)))
        for i in range(5):
            get(proxy.url(listen, f"/b{i}"))
        proxy.access_log(10, timeout=15)
        proxy.collector.terminate()
        proxy.collector.wait(10)
        time.sleep(1.0)  # the old worker exits: HAProxy's own messages end the file
        assert proxy.log.read_text().splitlines()[-1].startswith("[")
        get(proxy.url(listen, "/c"))
        proxy.collector = proxy.start_collector()
        proxy.access_log(11)
        time.sleep(1.5)  # time for the ring to come twice
        lines = proxy.access_log(11)
    assert sorted(paths(lines).values()) == [1] * 11, paths(lines)


# the collector with a replay that never ends by a pause: as when the stream never pauses (a
# busy proxy's); what it writes then is what it decided was new without waiting
NO_PAUSE = (
    "import sys\n"
    "from elastin.mesh.haproxy import accesslog\n"
    "accesslog.REPLAY_SECONDS = 3600.0\n"
    "sys.exit(accesslog.main(sys.argv[1:]))\n"
)


def worker_pid(proxy: MeshProxy) -> int:
    """The pid of the worker that answers the runtime API."""
    info = dict(x.split(": ", 1) for x in proxy.send("show info").splitlines() if ": " in x)
    return int(info["Pid"])


def collector_without_pauses(proxy: MeshProxy) -> subprocess.Popen[bytes]:
    """``proxy``'s collector, restarted with ``NO_PAUSE``; returns once it follows."""
    proc = subprocess.Popen(
        [sys.executable, "-c", NO_PAUSE, str(proxy.process.socket), str(proxy.log)]
    )
    deadline = time.monotonic() + 30
    while proxy.cli_sessions() < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "the collector did not attach"
        time.sleep(0.05)
    return proc


def test_a_worker_started_by_a_reload_while_the_collector_was_away_is_all_new(
    mesh_proxy: Start,
) -> None:
    """Issue #13: the agent away, HAProxy reloads; the new worker's ring cannot hold the
    file's last line (the old worker's), and its master writes "New worker ... forked" and
    "Loading success" into the file after the fork, so the file is newer than the worker.
    The collector that comes back must take the new worker's lines as new at once (the
    time of the file's last line is before the worker started), not hold them until the
    stream pauses."""
    with http_backend("web") as port:
        listen = free_port()
        proxy = mesh_proxy(one_service(port, listen))
        for i in range(5):
            get(proxy.url(listen, f"/a{i}"))
        proxy.access_log(5)
        proxy.collector.terminate()  # the agent stops
        proxy.collector.wait(10)
        old = worker_pid(proxy)
        snap = one_service(port, listen, 2)
        proxy.apply(replace(snap, listeners=(replace(snap.listeners[0], owner="shop/c"),)))
        assert proxy.reloads == 1
        # the old worker is gone (what it logs after the collector left is lost with it)
        deadline = time.monotonic() + 40
        while Path(f"/proc/{old}").exists() or worker_pid(proxy) == old:
            assert time.monotonic() < deadline, "the old worker did not exit"
            time.sleep(0.05)
        for i in range(5):
            get(proxy.url(listen, f"/b{i}"))  # to the new worker, nobody collecting
        # the file ends with HAProxy's own messages, written after the new worker started
        assert proxy.log.read_text().splitlines()[-1].startswith("["), proxy.log.read_text()
        proxy.collector = collector_without_pauses(proxy)  # the agent is back
        for i in range(5):
            get(proxy.url(listen, f"/c{i}"))
        lines = proxy.access_log(15, timeout=20)
    seen = paths(lines)
    assert sorted(seen.values()) == [1] * 15, seen
    assert all(seen[f"/{x}{i}"] == 1 for x in "abc" for i in range(5)), seen

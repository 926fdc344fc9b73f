"""Traffic totals when a HAProxy worker's pid is reused (``mesh.haproxy.stats.Totals``, pure).

A pid alone does not name a worker: a proxy restarted (or started after a reboot) may get
the pid of a worker whose counts already joined the base, or of the worker ``counters.json``
remembers. A worker is its pid and its start (``show info``'s Start_time_sec), and a counter
that went down always means a new worker. The base keeps only the endpoints still served.

Every reading goes through ``split_info`` and ``parse_stats``, as the agent's does.
"""

from __future__ import annotations

from elastin.mesh.haproxy.stats import Totals, parse_stats, split_info

STAT = (
    "# pxname,svname,stot,req_tot,hrsp_2xx,mode\n"
    "c_shop.web.http,BACKEND,{n},{n},{n},http\n"
    "{servers}"
)


def answer(pid: int, started: int | None, n: int, servers: dict[str, int] | None = None) -> str:
    """``show info;show stat``'s answer of worker ``pid`` (started at ``started``; None: a
    proxy that does not say) that counted ``n`` requests, ``servers``: endpoint -> served."""
    info = f"Name: HAProxy\nPid: {pid}\nUptime_sec: 5\n"
    if started is not None:
        info += f"Start_time_sec: {started}\n"
    rows = "".join(f"c_shop.web.http,e_{e},{s},,,http\n" for e, s in (servers or {}).items())
    return info + "\n" + STAT.format(n=n, servers=rows)


def read(t: Totals, text: str) -> int:
    worker, rest = split_info(text)
    got, _ = t.add(worker, parse_stats(rest))
    return got["shop.web.http"].requests


def served(t: Totals, text: str) -> dict[str, int]:
    worker, rest = split_info(text)
    got, _ = t.add(worker, parse_stats(rest))
    return {e.id: e.served for e in got["shop.web.http"].endpoints}


def test_a_new_worker_with_a_retired_workers_pid_is_counted() -> None:
    t = Totals()
    assert read(t, answer(100, 1000, 10)) == 10
    assert read(t, answer(200, 1060, 2)) == 12  # a reload: 100 retired
    # the proxy restarted (or the node rebooted) and its new worker got pid 100 again
    assert read(t, answer(100, 5000, 5)) == 17
    assert read(t, answer(100, 5000, 8)) == 20  # not taken as a late reading: it counts


def test_a_late_reading_of_a_retired_worker_is_still_not_counted_again() -> None:
    t = Totals()
    read(t, answer(100, 1000, 10))
    read(t, answer(200, 1060, 2))
    assert read(t, answer(100, 1000, 11)) == 12  # the old worker, answering late


def test_the_saved_workers_pid_reused_after_a_reboot_adds_to_the_totals() -> None:
    t = Totals()
    read(t, answer(100, 1000, 400))
    read(t, answer(200, 1060, 100))  # the base moved: saved
    saved = t.to_data()
    # a reboot: the proxy's new worker has pid 200 again and counts from zero
    again = Totals.from_data(saved)
    assert read(again, answer(200, 9000, 3)) == 503
    assert read(again, answer(200, 9000, 4)) == 504


def test_a_counter_that_went_down_is_a_new_worker_even_with_the_same_pid() -> None:
    # a proxy that does not say when its worker started: the same pid, counting from zero
    t = Totals()
    assert read(t, answer(100, None, 500)) == 500
    assert read(t, answer(100, None, 3)) == 503
    assert read(t, answer(100, None, 4)) == 504


def test_an_older_counters_file_keeps_its_base_and_forgets_its_retired_pids() -> None:
    # counters.json as agents before this change wrote it: workers by pid alone
    old = {
        "worker": 200,
        "base": {"shop.web.http": {"requests": 10}},
        "last": {"shop.web.http": {"requests": 5}},
        "retired": [100],
    }
    t = Totals.from_data(old)
    assert t.retired == []
    # the same worker 200 still runs (the agent was upgraded, the proxy kept): not a new one
    assert read(t, answer(200, 1060, 6)) == 16
    # pid 100, once retired, is a new worker now: it counts
    assert read(t, answer(100, 7000, 1)) == 17


def test_the_base_keeps_only_the_endpoints_still_served() -> None:
    t = Totals()
    assert served(t, answer(100, 1000, 5, {"a1-http": 5})) == {"a1-http": 5}
    # a reload after a1 was replaced by a2: a1's count leaves the base, a2 counts on
    got = served(t, answer(200, 1060, 3, {"a2-http": 3}))
    assert got == {"a2-http": 3}
    assert "endpoint:a1-http" not in t.base["shop.web.http"]
    assert t.base["shop.web.http"]["requests"] == 5  # the cluster's own counts stay
    got = served(t, answer(300, 1120, 1, {"a2-http": 1}))
    assert got == {"a2-http": 4}
    assert set(t.base["shop.web.http"]) == {
        "requests",
        "responses_2xx",
        "responses_3xx",
        "responses_4xx",
        "responses_5xx",
        "connect_errors",
        "response_errors",
        "retries",
        "redispatches",
        "endpoint:a2-http",
    }


def test_an_endpoint_added_again_in_the_same_worker_adds_only_its_own_count() -> None:
    t = Totals()
    read(t, answer(100, 1000, 10, {"a1-http": 10}))
    # the same worker: the server was deleted and added again, its count starts from zero;
    # the cluster counted on (nothing of it is counted twice)
    assert read(t, answer(100, 1000, 12, {"a1-http": 2})) == 12
    assert served(t, answer(100, 1000, 13, {"a1-http": 3})) == {"a1-http": 13}

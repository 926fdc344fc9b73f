"""Traffic totals that survive the proxy's reloads (``mesh.haproxy.stats.Totals``, pure) and
the mesh manager's side of it on a ``FakeProxy``: HAProxy counts from zero in every new
worker, the totals the agent reports never go back (after ``scale loadgen 3`` REQUESTS went
from 497 to 37); and listeners whose port another process holds are left out alone."""

from __future__ import annotations

from pathlib import Path

from elastin.agent.mesh import STATS_COMMAND, MeshManager
from elastin.mesh.haproxy.stats import Totals, Worker, parse_stats, split_info
from elastin.mesh.model import Cluster, Endpoint, Listener, MeshSnapshot
from elastin.mesh.model.traffic import ClusterStats, EndpointStats
from elastin.testing import FakeClock, FakeProxy


def stats(requests: int, served: int = 0, active: int = 0) -> dict[str, ClusterStats]:
    ep = EndpointStats("a1-http", "UP", active, served)
    return {
        "shop.web.http": ClusterStats(
            "shop",
            "web",
            "http",
            "http",
            requests,
            responses_2xx=requests,
            active=active,
            endpoints=(ep,),
        )
    }


def test_a_new_worker_adds_what_the_old_one_counted() -> None:
    t = Totals()
    got, moved = t.add(Worker(100), stats(497, 497))
    assert got["shop.web.http"].requests == 497 and not moved
    got, moved = t.add(Worker(200), stats(37, 37, active=2))  # reloaded: counting from zero again
    assert moved
    s = got["shop.web.http"]
    assert (s.requests, s.responses_2xx, s.endpoints[0].served) == (534, 534, 534)
    assert s.active == 2  # a gauge is not added up
    got, moved = t.add(Worker(200), stats(40, 40))
    assert got["shop.web.http"].requests == 537 and not moved
    got, _ = t.add(Worker(300), stats(0))  # and again
    assert got["shop.web.http"].requests == 537


def test_a_late_reading_of_an_old_worker_is_not_counted_again() -> None:
    # a reading sent before a reload and answered after one of the new worker's
    t = Totals()
    t.add(Worker(100), stats(10))
    t.add(Worker(200), stats(2))
    got, moved = t.add(Worker(100), stats(11, active=4))
    assert not moved and got["shop.web.http"].requests == 12
    assert got["shop.web.http"].active == 4
    got, moved = t.add(Worker(200), stats(3))
    assert not moved and got["shop.web.http"].requests == 13


def test_without_a_pid_a_counter_that_went_down_means_a_new_worker() -> None:
    t = Totals()
    t.add(None, stats(10))
    got, moved = t.add(None, stats(3))
    assert moved and got["shop.web.http"].requests == 13


def test_the_totals_survive_a_save_and_load() -> None:
    t = Totals()
    t.add(Worker(100), stats(10))
    t.add(Worker(200), stats(5))
    again = Totals.from_data(t.to_data())
    got, _ = again.add(Worker(200), stats(6))
    assert got["shop.web.http"].requests == 16
    assert Totals.from_data("garbage") == Totals()
    assert Totals.from_data({"base": [1]}) == Totals()


def test_split_info_finds_the_worker() -> None:
    stat = "# pxname,svname,stot,mode\nc_shop.web.http,BACKEND,4,http\n"
    worker, rest = split_info("Name: HAProxy\nVersion: 2.6\nPid: 4242\n\n" + stat)
    assert worker == Worker(4242, 0) and "shop.web.http" in parse_stats(rest)
    assert split_info(stat) == (None, stat)


STAT = "# pxname,svname,stot,req_tot,mode\nc_shop.web.http,BACKEND,{n},{n},http\n"


def answer(pid: int, n: int) -> str:
    return f"Name: HAProxy\nPid: {pid}\n\n" + STAT.format(n=n)


LST = (Listener("a1.web", 18080, "shop.web.http"), Listener("a2.web", 18081, "shop.web.http"))
CLUSTER = (Cluster("shop.web.http", endpoints=(Endpoint("b-http", "127.0.0.1", 9001),)),)


def snap(version: int, listeners: tuple[Listener, ...] = LST) -> MeshSnapshot:
    return MeshSnapshot(version, "n1", listeners, CLUSTER)


def no_client() -> object:
    raise AssertionError("not used")


async def test_the_manager_reports_monotonic_totals_and_keeps_them(tmp_path: Path) -> None:
    proxy = FakeProxy()
    m = MeshManager(no_client, "n1", tmp_path / "mesh", proxy, clock=FakeClock())  # type: ignore[arg-type]
    await m.apply(snap(1))
    proxy.answers[STATS_COMMAND] = answer(10, 497)
    assert (await m.read_stats())["shop.web.http"].requests == 497
    proxy.answers[STATS_COMMAND] = answer(11, 37)  # a reload: a new worker
    assert (await m.read_stats())["shop.web.http"].requests == 534
    assert m.stats()["shop.web.http"].requests == 534
    # an agent restart keeps the base (the proxy outlives the agent)
    again = MeshManager(no_client, "n1", tmp_path / "mesh", proxy, clock=FakeClock())  # type: ignore[arg-type]
    again.current = m.current
    proxy.answers[STATS_COMMAND] = answer(11, 40)
    assert (await again.read_stats())["shop.web.http"].requests == 537


async def test_a_listener_whose_port_is_held_is_left_out_alone(tmp_path: Path) -> None:
    proxy = FakeProxy()
    held = {18081: "pid 77 (nc -l 18081)"}
    failed: list[tuple[str, str]] = []
    m = MeshManager(
        no_client,  # type: ignore[arg-type]
        "n1",
        tmp_path / "mesh",
        proxy,
        clock=FakeClock(),
        port_holder=lambda _address, port: held.get(port),
        on_listener_failed=lambda lst, who: failed.append((lst.name, who)),
    )
    assert await m.apply(snap(1)) == "started"
    assert "bind 127.0.0.1:18080" in proxy.configs[-1]
    assert "18081" not in proxy.configs[-1]  # the one left out; the other is served
    assert failed == [("a2.web", "pid 77 (nc -l 18081)")]
    assert m.listener_failed == {"a2.web": (18081, "pid 77 (nc -l 18081)")}
    # nothing changed: no reload; the port is still held
    assert await m.apply(snap(2)) == "unchanged"
    assert not await m.retry_failed_listeners()
    del held[18081]  # the process let it go: the listener is added
    assert await m.retry_failed_listeners()
    assert "bind 127.0.0.1:18081" in proxy.configs[-1] and m.listener_failed == {}


async def test_a_listener_on_the_exporters_port_is_left_out(tmp_path: Path) -> None:
    proxy = FakeProxy()
    m = MeshManager(no_client, "n1", tmp_path / "mesh", proxy, clock=FakeClock())  # type: ignore[arg-type]
    clash = (LST[0], Listener("a3.web", m.exporter_port, "shop.web.http"))
    await m.apply(snap(1, clash))
    assert m.listener_failed == {"a3.web": (m.exporter_port, "this node proxy's metrics exporter")}
    assert proxy.configs[-1].count(f"bind 127.0.0.1:{m.exporter_port}") == 1


async def test_only_the_metrics_loops_reading_is_where_a_jump_is_measured_from(
    tmp_path: Path,
) -> None:
    """The supervisor reads the proxy's counters every second too: its readings must not
    move the starting point the metrics loop measures a load jump from (a reviewer saw a
    doubling of the load never reported early on a real node)."""
    proxy = FakeProxy()
    m = MeshManager(no_client, "n1", tmp_path / "mesh", proxy, clock=FakeClock())  # type: ignore[arg-type]
    await m.apply(snap(1))
    proxy.answers[STATS_COMMAND] = answer(10, 100)
    await m.read_stats(mark=True)  # the metrics loop's, for its report
    proxy.answers[STATS_COMMAND] = answer(10, 180)
    await m.read_stats()  # the supervisor's
    assert m.reported_arrivals[:2] == (Worker(10, 0), {"shop.web.http": 100})
